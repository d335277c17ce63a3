"""`afrl ship`: copy a trained model into `afrl/shipped/` and make it the newest `--model default`.

Every stage ends here (SFT, RL, distillation), so it lives beside the model resolver rather than in one stage:
    afrl ship runs/sft_smollm2_trec_balanced --name sft-smollm2-trec-balanced
Only the files the manifest lists (plus `afrl.json`) are copied, so checkpoints and caches stay behind; the copy must
verify against its manifest and weigh at most 48 MB (the repo carries adapters and small students, not bases). A
fully fine-tuned student can be stored in bfloat16 (`--dtype bfloat16`, half the bytes; loaders upcast to the dtype
they run in), and a model card (`--card`, the README.md beside the weights) can name its teacher, data and licence:
    afrl ship runs/distill_minilm_prefix_explain --name minilm-prefix-student --dtype bfloat16 --card CARD.md
Either rewrites the copy's manifest (new file hashes; the source folder is left as it is), and a bfloat16 copy
records how far its grade logits moved on the export check pairs (`parity.shipped_dtype`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from afrl.manifest import MANIFEST_NAME, load_verified

log = logging.getLogger(__name__)

MAX_SHIPPED_BYTES = 48 * 1024 * 1024
SHIPPED_DTYPES = ("bfloat16", "float16")


def cast_weights(folder: Path, dtype: str) -> int:
    """Rewrite every `*.safetensors` in `folder` with its floating-point tensors in `dtype` (integer tensors and
    the file's metadata kept); returns how many tensors changed dtype."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    changed = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.dtype != target:
                tensors[key] = tensor.to(target).contiguous()
                changed += 1
        save_file(tensors, str(path), metadata=metadata)
    return changed


def grade_logit_shift(before: Path, after: Path) -> float:
    """Largest |grade logit| change between two model folders, both run in float32, on the export check pairs."""
    import torch

    from afrl.scorer import load_scorer
    from export.check_pairs import BUILTIN_PAIRS

    a, b = load_scorer(str(before)), load_scorer(str(after))
    prompts = a.builder.build_many(BUILTIN_PAIRS)
    with torch.inference_mode():
        return float((a.logits_for_prompts(prompts) - b.logits_for_prompts(prompts)).abs().max())


def ship_model(
    model_dir: str | Path,
    name: str,
    shipped_dir: Path | None = None,
    order: int | None = None,
    dtype: str | None = None,
    card: str | Path | None = None,
) -> Path:
    """Copy `model_dir` to `<shipped_dir>/<name>/` atomically and list it in `index.json` (newest unless `order`).
    `dtype` stores the weights in bfloat16 or float16; `card` becomes the copy's README.md."""
    from afrl import models

    src = Path(model_dir)
    manifest = load_verified(src)
    shipped = shipped_dir or models.SHIPPED_DIR
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"shipped model name {name!r}: use letters, digits, '.', '_' or '-'")
    if dtype is not None and dtype not in SHIPPED_DTYPES:
        choices = ", ".join(SHIPPED_DTYPES)
        raise ValueError(f"--dtype {dtype!r}: choose one of {choices} (or leave it out to copy as is)")
    if card is not None and not Path(card).is_file():
        raise FileNotFoundError(f"model card {card} not found: pass a Markdown file (it becomes README.md)")
    files = [*manifest.files, MANIFEST_NAME]
    target = shipped / name
    tmp = shipped / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, tmp / f)
        if dtype is not None or card is not None:
            if dtype is not None:
                manifest.extra["weights_dtype"] = dtype
                manifest.extra["cast_tensors"] = cast_weights(tmp, dtype)
            if card is not None:
                shutil.copy2(card, tmp / "README.md")
            manifest.provenance["shipped_from"] = str(src)
            manifest.write(tmp)
            if dtype is not None:
                manifest.parity["shipped_dtype"] = {"max_abs_grade_logit_diff": grade_logit_shift(src, tmp)}
                manifest.write(tmp)
        load_verified(tmp)
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if size > MAX_SHIPPED_BYTES:
            hint = "" if dtype else ", or store a full model in bfloat16 with --dtype bfloat16"
            raise ValueError(
                f"{src} weighs {size / 2**20:.1f} MB as shipped; a shipped model must be at most "
                f"{MAX_SHIPPED_BYTES / 2**20:.0f} MB (ship a LoRA adapter{hint})"
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    index_path = shipped / "index.json"
    entries = json.loads(index_path.read_text()) if index_path.is_file() else []
    entries = [e for e in entries if e["path"] != name]
    entries.append(
        {"path": name, "order": order if order is not None else max((e["order"] for e in entries), default=0) + 1}
    )
    index_path.write_text(json.dumps(entries, indent=2) + "\n")
    log.info("shipped %s (%.1f MB) as %s", src, size / 2**20, target)
    return target


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ship",
        help="copy a trained model into afrl/shipped/ and make it `--model default`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", help="a trained model folder with its afrl.json manifest")
    p.add_argument("--name", required=True, help="folder name under afrl/shipped/")
    p.add_argument("--order", type=int, default=None, help="position in index.json (default: newest)")
    p.add_argument("--dtype", choices=SHIPPED_DTYPES, default=None, help="store the weights in this dtype")
    p.add_argument("--card", default=None, help="a Markdown model card, copied as the shipped README.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(ship_model(args.model_dir, args.name, order=args.order, dtype=args.dtype, card=args.card))
    return 0
