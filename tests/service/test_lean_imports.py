"""A serving process stays lean: the `afrl` parser imports no training stack, and loading a model on the torch
backend imports neither scikit-learn nor SciPy (afrl/lean_imports.py). Each check runs in a fresh interpreter,
since this test process has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from afrl.testing import save_tiny_model

HEAVY = ("sklearn", "scipy", "trl", "datasets", "pandas", "peft")


def loaded_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
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
