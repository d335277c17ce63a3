"""The shipped `--model default` (afrl/shipped/, issue 15): its manifest verifies and names its teacher, data,
config and licence; it ranks; and it exports to ONNX as the Docker image builds it (scorer and decoder)."""

from __future__ import annotations

import numpy as np
import pytest

from afrl.manifest import load_verified
from afrl.models import resolve
from afrl.scorer import load_scorer
from export.check_pairs import BUILTIN_PAIRS


@pytest.fixture(scope="module")
def default_dir():
    return resolve("default")


def test_the_default_manifest_verifies_and_names_teacher_data_config_and_licence(default_dir):
    manifest = load_verified(default_dir)
    assert manifest.kind == "distill" and manifest.extra["teacher"] == "minilm"
    assert manifest.provenance["data"] and manifest.provenance["config"]["pool_config"]
    assert manifest.provenance["command"].startswith("afrl train distill --config training/configs/")
    assert "non-commercial" in manifest.provenance["license"]
    assert "non-commercial" in (default_dir / "README.md").read_text()
    assert manifest.extra["weights_dtype"] == "bfloat16"
    assert manifest.parity["shipped_dtype"]["max_abs_grade_logit_diff"] < 0.05


def test_the_default_ranks_answers_above_off_topic_passages():
    """For four export check queries, the passage that answers scores above the off-topic one. (Not "first of
    all": for `population of berlin` it puts "Berlin is the capital ... of Germany" a hair above the population
    figure, 0.500 against 0.489.)"""
    scorer = load_scorer("default")
    cases = [  # (query, the answer, an off-topic passage)
        ("population of berlin", 0, 2),
        ("what is the boiling point of water", 0, 1),
        ("symptoms of vitamin d deficiency", 0, 1),
        ("waterproof hiking boots men size 42", 0, 1),
    ]
    for query, answer, off_topic in cases:
        docs = [d for q, d in BUILTIN_PAIRS if q == query]
        scores = dict(scorer.rank(query, docs))
        assert scores[answer] > scores[off_topic], f"{query!r}: {scores}"


@pytest.mark.slow
def test_the_default_exports_its_scorer_and_decoder_with_parity(tmp_path):
    from export.pipeline import ExportOptions, export_model
    from export.runtime import OnnxScorer

    manifest = export_model("default", ExportOptions(out=tmp_path, max_check_pairs=6, threads=2, optimize=False))
    assert manifest.extra["decoder"] == "decoder/prefix_lm.onnx"  # /explain works in the Docker image
    assert manifest.parity["decoder"]["greedy_equal_to_torch"] is True
    assert manifest.parity["fp32"]["max_abs_prob_diff"] < 1e-4
    pairs = BUILTIN_PAIRS[:6]
    onnx = np.array([r.probabilities for r in OnnxScorer.from_dir(tmp_path, threads=2).score(pairs)])
    ref = np.array([r.probabilities for r in load_scorer("default").score(pairs)])
    assert np.abs(onnx - ref).max() < 1e-4
