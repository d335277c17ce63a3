"""Slow: export the embedded default base model (SmolLM2-135M) once and check parity on both padding sides."""

import numpy as np
import pytest

from afrl.manifest import Manifest
from afrl.scorer import load_scorer
from export.check_pairs import BUILTIN_PAIRS
from export.pipeline import ExportOptions, export_scorer_model
from export.runtime import OnnxScorer

pytestmark = pytest.mark.slow
PAIRS = [BUILTIN_PAIRS[i] for i in (0, 2, 15, 25)]  # short and long prompts, so padding matters


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    scorer = load_scorer("default-base")
    out = tmp_path_factory.mktemp("onnx-default")
    # the decoder is left out to keep CI time down (tests/test_export_tiny.py checks it; README records the default)
    opts = ExportOptions(out=out, max_check_pairs=4, decoder=False, threads=2, optimize=False)
    export_scorer_model(scorer, "default-base", opts)
    return out, scorer


@pytest.mark.parametrize("side", ["left", "right"])
def test_default_export_parity(default_export, side):
    out, scorer = default_export
    onnx = OnnxScorer.from_dir(out, threads=2, padding_side=side)
    ours = np.array([r.probabilities for r in onnx.score(PAIRS)])
    ref = np.array([r.probabilities for r in scorer.score(PAIRS)])
    assert np.abs(ours - ref).max() < 1e-4
    manifest = Manifest.read(out)
    assert manifest.parity["fp32"]["max_abs_prob_diff"] < 1e-4
    assert manifest.extra["external_data"] is False  # 135M parameters stay inside the 2 GB protobuf
