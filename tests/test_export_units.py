"""Fast export checks that need no exported graph: providers, parity figures, gates, check data, padding."""

import json

import numpy as np
import pytest

from afrl.padding import pad_rows
from export import parity
from export.check_pairs import BUILTIN_PAIRS, load_check_pairs
from export.providers import provider_list, provider_names


def test_tensorrt_provider_settings():
    providers = provider_list("tensorrt", cache_dir="/tmp/engines", fp16=True, profiles={"max": (32, 512)})
    assert provider_names(providers) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = providers[0][1]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == "/tmp/engines"
    assert trt["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert trt["trt_profile_max_shapes"] == "input_ids:32x512,attention_mask:32x512"
    assert provider_list("tensorrt", fp16=False)[0][1]["trt_fp16_enable"] is False


def test_cpu_and_cuda_provider_lists_and_bad_input():
    assert provider_list("cpu") == ["CPUExecutionProvider"]
    assert provider_names(provider_list("CUDA")) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider"):
        provider_list("rocm")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        provider_list("tensorrt", profiles={"min": (4, 64), "opt": (8, 32)})


def test_compare_figures():
    ref = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]], dtype=np.float32)
    same = parity.compare(ref, ref.copy())
    assert same.max_abs_prob_diff == 0.0 and same.grade_agreement == 1.0 and same.max_score_delta == 0.0
    flipped = parity.compare(ref, ref[::-1].copy())
    assert flipped.grade_agreement == 0.0
    scores = parity.expected_score(parity.softmax(ref))
    assert flipped.max_score_delta == pytest.approx(abs(scores[0] - scores[1]))


def test_fp32_gate_refuses_beyond_tolerance_and_nan():
    parity.check_fp32(parity.Comparison(5e-5, 1.0, 5e-5, 4))
    with pytest.raises(parity.ExportError, match="fp32 parity failed"):
        parity.check_fp32(parity.Comparison(2e-4, 1.0, 1e-4, 4))
    with pytest.raises(parity.ExportError):
        parity.check_fp32(parity.Comparison(float("nan"), 1.0, 0.0, 4))


def test_int8_verdict_gives_the_figures():
    figures = parity.Comparison(max_abs_prob_diff=0.08, grade_agreement=0.9, max_score_delta=0.07, pairs=32)
    assert parity.int8_verdict(figures, min_agreement=0.9, max_score_delta=0.1) is None
    message = parity.int8_verdict(figures, min_agreement=0.95, max_score_delta=0.05)
    assert message is not None
    assert "0.9000 < required 0.95" in message and "0.07 > allowed 0.05" in message


def test_check_pairs_builtin_and_jsonl(tmp_path):
    assert len(load_check_pairs(None)) == len(BUILTIN_PAIRS) >= 32
    assert len(load_check_pairs(None, limit=5)) == 5
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({"query": "q", "document": "d", "grade": 2}) + "\n\n")
    assert load_check_pairs(path) == [("q", "d")]
    path.write_text('{"query": "q"}\n')
    with pytest.raises(ValueError, match=r"dev\.jsonl:1"):
        load_check_pairs(path)
    with pytest.raises(FileNotFoundError):
        load_check_pairs(tmp_path / "missing.jsonl")


def test_pad_rows_both_sides():
    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64


def test_cli_refuses_a_non_empty_out_folder(tmp_path, capsys):
    from afrl.cli import main
    from afrl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--model", str(model), "--out", str(out), "--threads", "1"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
