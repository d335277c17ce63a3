"""A serving process stays lean: the `afrl` parser imports no training stack, loading a model on the torch
backend imports neither scikit-learn nor SciPy, and an ONNX-only server runs without torch (afrl/lean_imports.py).
Each check runs in a fresh interpreter, since this test process has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from afrl.testing import save_tiny_model

HEAVY = ("sklearn", "scipy", "trl", "datasets", "pandas", "peft")


def loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {list(heavy)!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("installed", HEAVY)
def test_every_checked_package_is_installed_here(installed):
    # The checks below mean something only where these packages exist (the dev environment installs them all).
    __import__(installed)


def test_the_cli_parser_imports_no_training_stack():
    assert loaded_after("from afrl.cli import build_parser; build_parser()") == []


def test_loading_a_model_for_serving_skips_sklearn_and_scipy(tmp_path: Path):
    model = save_tiny_model(tmp_path / "tiny")
    code = (
        "from service.backends import load_backend\nfrom service.settings import Settings\n"
        f"load_backend(Settings(model={str(model)!r}, backend='torch', threads=1, warmup=False))"
    )
    assert loaded_after(code) == []


def test_without_the_flags_transformers_does_import_sklearn(tmp_path: Path):
    # The control: the same load through transformers alone pulls scikit-learn in, so the test above can fail.
    model = save_tiny_model(tmp_path / "tiny")
    loaded = loaded_after(
        f"from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained({str(model)!r})"
    )
    assert "sklearn" in loaded


# ------------------------------------------------------------------------------------- ONNX without torch


@pytest.fixture(scope="module")
def tiny_export(_tiny_models, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from service_helpers import make_backend

    from export.pipeline import ExportOptions, export_scorer_model

    model, tok = _tiny_models["qwen3"]
    out = tmp_path_factory.mktemp("lean") / "tiny"
    export_scorer_model(make_backend(model, tok).scorer, "tiny-qwen3", ExportOptions(out=out, threads=1, decoder=False))
    return out


def _onnx_load_and_score(folder: Path, keep_out: bool) -> str:
    lean = "from afrl.lean_imports import keep_torch_out\nassert keep_torch_out()\n" if keep_out else ""
    return lean + (
        "from service.backends import load_backend\nfrom service.settings import Settings\n"
        f"b = load_backend(Settings(model={str(folder)!r}, backend='onnx', threads=1, warmup=False))\n"
        "p = b.builder.build_many([('population of berlin', 'Berlin had 3.5 million inhabitants.')])\n"
        "assert b.grade_logits(p).shape == (1, len(b.scale.labels))\n"
    )


@pytest.mark.slow  # a real (tiny) ONNX export
def test_an_onnx_only_server_scores_without_importing_torch(tiny_export: Path):
    assert loaded_after(_onnx_load_and_score(tiny_export, keep_out=True), ("torch",)) == []


@pytest.mark.slow
def test_without_keep_torch_out_the_onnx_backend_does_import_torch(tiny_export: Path):
    # The control: transformers (the tokenizer) pulls torch in, so the test above can fail.
    assert loaded_after(_onnx_load_and_score(tiny_export, keep_out=False), ("torch",)) == ["torch"]


def test_keep_torch_out_is_refused_once_torch_is_loaded():
    # Too late to matter, and a process that already uses torch must keep it: nothing is changed.
    code = "import os, torch\nfrom afrl.lean_imports import keep_torch_out\nassert not keep_torch_out()\n"
    code += "assert 'USE_TORCH' not in os.environ"
    assert loaded_after(code, ("torch",)) == ["torch"]


@pytest.mark.slow
def test_serve_keeps_torch_out_only_for_an_onnx_only_process(tiny_export: Path, tmp_path: Path):
    from service.backend_choice import serves_onnx_only
    from service.settings import Settings

    assert serves_onnx_only(Settings(model=str(tiny_export), backend="onnx"))
    assert serves_onnx_only(Settings(model=str(tiny_export), backend="auto"))  # rule 1 of --backend auto
    assert not serves_onnx_only(Settings(model=str(tmp_path), backend="auto"))  # may choose torch
    assert not serves_onnx_only(Settings(model=str(tiny_export), backend="torch"))


# What a fresh interpreter runs to make --backend auto's choice like `afrl serve` on a CPU without native bf16 and
# without GPU device files (patched, so that the test means the same on every CI machine kind).
_NO_BF16_NO_GPU = (
    "import afrl.hardware, service.backend_choice as bc\n"
    "afrl.hardware.cpu_has_native_bf16 = lambda *a: False\nbc.gpu_device_present = lambda: False\n"
)


@pytest.fixture
def auto_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(model, its --backend auto INT8 export, built once into a temporary AFRL cache, gate opened for a random
    tiny model, with the prefix LM's own decoder)."""
    import functools

    import export.pipeline
    from service import backend_choice

    monkeypatch.setenv("AFRL_CACHE_DIR", str(tmp_path / "afrl-cache"))
    gate_open = functools.partial(export.pipeline.ExportOptions, int8_min_agreement=0.0, int8_max_score_delta=1.0)
    monkeypatch.setattr(export.pipeline, "ExportOptions", gate_open)
    model = save_tiny_model(tmp_path / "bert", arch="bert")
    folder, refusal = backend_choice.int8_export(str(model), 1)
    assert refusal is None
    return model, folder


@pytest.mark.slow  # a real (tiny) export
def test_auto_with_its_int8_export_built_serves_without_torch(auto_export, monkeypatch: pytest.MonkeyPatch):
    """Rule 4's later starts: the export exists, so the choice needs neither torch nor an export, and the server
    keeps torch out; the first start (no export yet), a native-bf16 CPU, a GPU or a refused INT8 graph do not."""
    import afrl.hardware
    from service import backend_choice
    from service.backend_choice import REFUSED, serves_onnx_only
    from service.settings import Settings

    model, folder = auto_export
    auto = Settings(model=str(model), backend="auto", threads=1, warmup=False)
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: False)
    monkeypatch.setattr(backend_choice, "gpu_device_present", lambda: False)
    assert serves_onnx_only(auto)
    code = _NO_BF16_NO_GPU + (
        "from afrl.lean_imports import keep_torch_out\nfrom service.settings import Settings\n"
        "from service.backends import load_backend\n"
        f"s = Settings(model={str(model)!r}, backend='auto', threads=1, warmup=False)\n"
        "assert bc.serves_onnx_only(s) and keep_torch_out()\nb = load_backend(s)\n"
        f"assert b.name == 'onnx' and b.runtime_info()['scorer'] == 'int8' and {str(folder)!r} in b.chosen\n"
        "p = b.builder.build_many([('population of berlin', 'Berlin had 3.5 million inhabitants.')])\n"
        "assert b.grade_logits(p).shape == (1, len(b.scale.labels))\n"
    )
    assert loaded_after(code, ("torch",)) == []
    monkeypatch.setattr(backend_choice, "gpu_device_present", lambda: True)
    assert not serves_onnx_only(auto)  # torch must look at the GPU
    assert serves_onnx_only(Settings(model=str(model), backend="auto", device="cpu"))  # --device cpu: it need not
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: True)
    assert not serves_onnx_only(auto)  # rule 3: torch bf16
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: False)
    monkeypatch.setattr(backend_choice, "gpu_device_present", lambda: False)
    (folder / REFUSED).write_text("INT8 refused")
    assert not serves_onnx_only(auto)  # the gate refused INT8: torch fp32
    (folder / REFUSED).unlink()
    monkeypatch.setenv("AFRL_CACHE_DIR", str(folder.parent.parent.parent / "empty-cache"))
    assert not serves_onnx_only(auto)  # first start: the export needs torch
