"""`afrl ship`: the size cap, a full student stored in bfloat16 with its card, and refusals that name the fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from afrl import models, shipping
from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import Manifest, load_verified
from afrl.scorer import load_scorer
from afrl.shipping import ship_model
from afrl.testing import build_tiny_model, save_tiny_model


def _model_with_manifest(path, arch="qwen3"):
    model_dir = save_tiny_model(path, arch=arch)
    _, tok = build_tiny_model(arch)
    builder = PromptBuilder(tok, max_query_tokens=32, max_document_tokens=128)  # within BERT's 512 positions
    Manifest.for_builder(builder, GradeScale(), kind="distill", base_model="x").write(model_dir)
    return model_dir


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(models, "SHIPPED_DIR", folder)
    return folder


def test_ship_refuses_oversized_models(tmp_path, shipped, monkeypatch):
    model_dir = _model_with_manifest(tmp_path / "m")
    monkeypatch.setattr(shipping, "MAX_SHIPPED_BYTES", 1000)
    with pytest.raises(ValueError, match=r"at most 0 MB .*--dtype bfloat16"):
        ship_model(model_dir, "too-big")
    assert not (shipped / "index.json").exists() and not list(shipped.iterdir())  # no half-written copy either


def test_a_full_student_ships_in_bfloat16_with_its_card(tmp_path, shipped):
    """The copy holds bf16 weights, verifies against its rewritten manifest, carries the card, records how far
    the grade logits moved, and is what `default` loads; the source folder is untouched."""
    src = _model_with_manifest(tmp_path / "student", arch="bert")
    before = (src / "afrl.json").read_text()
    card = tmp_path / "card.md"
    card.write_text("# student\nMS MARCO: non-commercial research use only.\n")
    target = ship_model(src, "student-bf16", dtype="bfloat16", card=card)

    with safe_open(str(target / "model.safetensors"), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 (safe_open is not a mapping)
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    assert dtypes == {torch.bfloat16}
    manifest = load_verified(target)
    assert manifest.extra["weights_dtype"] == "bfloat16" and manifest.extra["cast_tensors"] > 0
    assert "README.md" in manifest.files and "non-commercial" in (target / "README.md").read_text()
    shift = manifest.parity["shipped_dtype"]["max_abs_grade_logit_diff"]
    assert 0.0 < shift < 0.5  # bf16 rounding moves the logits a little, not a lot
    assert manifest.provenance["shipped_from"] == str(src)
    assert (src / "afrl.json").read_text() == before
    assert json.loads((shipped / "index.json").read_text()) == [{"path": "student-bf16", "order": 1}]
    scorer = load_scorer("default")
    assert next(scorer.model.parameters()).dtype == torch.float32  # upcast at load, as the scorer runs
    assert len(scorer.score([("population of berlin", "Berlin had 3.5 million inhabitants.")])) == 1


def test_budgets_beyond_the_models_positions_are_refused_at_load(tmp_path):
    model, tok = build_tiny_model("bert")  # 1024 positions
    from afrl.scorer import TorchScorer

    with pytest.raises(ValueError, match="model has 1024 positions: lower the token budgets"):
        TorchScorer(model, tok, PromptBuilder(tok, max_query_tokens=64, max_document_tokens=900), GradeScale())
    TorchScorer(model, tok, PromptBuilder(tok, max_query_tokens=32, max_document_tokens=128), GradeScale())


def test_ship_refuses_an_unknown_dtype_and_a_missing_card(tmp_path, shipped):
    src = _model_with_manifest(tmp_path / "m")
    with pytest.raises(ValueError, match="choose one of bfloat16, float16"):
        ship_model(src, "x", dtype="int4")
    with pytest.raises(FileNotFoundError, match=r"model card .* not found"):
        ship_model(src, "x", card=tmp_path / "nope.md")
    assert not list(shipped.iterdir())
