"""Shared fixtures: tiny random-weight models (session-scoped, deep-copied per test) and the TREC DL data."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from afrl.testing import build_tiny_model

# Tests share two cores with whatever else runs; one torch thread each keeps them predictable.
torch.set_num_threads(int(os.environ.get("AFRL_TEST_THREADS", "1")))

TREC_DIR = Path(os.environ.get("AFRL_TREC_DIR", Path(__file__).resolve().parents[1].parent / "shared/data/trec-dl"))


@pytest.fixture(scope="session")
def _tiny_models():
    return {arch: build_tiny_model(arch) for arch in ("qwen3", "llama")}


@pytest.fixture(params=["qwen3", "llama"])
def tiny(request, _tiny_models):
    """(model, tokenizer) of each tiny architecture; the model is a fresh copy the test may change."""
    model, tok = _tiny_models[request.param]
    return copy.deepcopy(model), tok


@pytest.fixture
def tiny_qwen(_tiny_models):
    model, tok = _tiny_models["qwen3"]
    return copy.deepcopy(model), tok


@pytest.fixture(scope="session")
def trec_dir() -> Path:
    if not (TREC_DIR / "dl20" / "qrels.txt").is_file():
        pytest.skip(f"TREC DL data not found at {TREC_DIR} (set AFRL_TREC_DIR to the folder with dl20/ and dl21/)")
    return TREC_DIR
