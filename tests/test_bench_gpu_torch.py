"""bench/gpu_torch.py, the GPU benchmark that needs only torch and transformers, run on the CPU here: it writes
well-formed JSON and Markdown for both models, and refuses `--device cuda` without a GPU instead of measuring a
CPU."""

from __future__ import annotations

import json

import pytest
import torch

from afrl.testing import save_tiny_model
from bench import gpu_torch


def test_cpu_run_of_the_gpu_script_writes_both_models(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    out, md = tmp_path / "g.json", tmp_path / "g.md"
    argv = ["--device", "cpu", "--dtype", "fp32", "--quick", "--model", str(model), "--batches", "1", "2"]
    assert (
        gpu_torch.main([*argv, "--repeats", "3", "--budget-s", "0.1", "--json", str(out), "--markdown", str(md)]) == 0
    )
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"qwen3-0.6b-architecture", "default"}
    for entry in data["models"].values():
        assert [r["batch"] for r in entry["batches"]] == [1, 2] and entry["device"] == "cpu"
        assert all(
            r["pairs_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["repeats"] >= 3 for r in entry["batches"]
        )
        assert entry["best_pairs_per_s"] == max(r["pairs_per_s"] for r in entry["batches"])
        assert entry["dtype"] == "float32"
    assert data["qwen3_0p6b_pairs_per_s"] == data["models"]["qwen3-0.6b-architecture"]["best_pairs_per_s"]
    assert data["tokens_per_pair"] == 256
    text = md.read_text()
    assert "random Qwen3-0.6B architecture (shrunk: --quick)" in text and ">= 2,000 on one H100 / H200" in text


def test_device_cuda_without_a_gpu_measures_nothing(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_torch.main(["--device", "cuda", "--json", str(tmp_path / "g.json")]) == 2
    assert "torch sees no GPU" in capsys.readouterr().err and not (tmp_path / "g.json").exists()
