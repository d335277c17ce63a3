"""The linear probe of training/probe.py: the ridge fit, and a run end to end on a tiny model and TREC folder."""

from __future__ import annotations

import json

import pytest
import torch

from afrl.testing import save_tiny_model
from tests.test_eval import write_tiny_trec
from training.data import Record
from training.probe import lexical_overlap, main, predict, ridge


def test_ridge_recovers_a_linear_function_and_shrinks_with_the_penalty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    true = torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    y = x @ true + 4.0
    w = ridge(x, y, 1e-6)
    torch.testing.assert_close(w[:-1], true, atol=1e-4, rtol=0)
    assert w[-1].item() == pytest.approx(4.0, abs=1e-4)  # the bias, unpenalised
    torch.testing.assert_close(predict(x, w), y, atol=1e-4, rtol=0)
    assert ridge(x, y, 1e4)[:-1].norm() < 0.5 * true.norm()


def test_lexical_overlap_is_the_share_of_query_words_found():
    assert lexical_overlap(Record("a", "berlin population", "The population of Berlin grew.", 2)) == 1.0
    assert lexical_overlap(Record("b", "berlin population", "Paris is large.", 0)) == 0.0


def test_probe_end_to_end_on_a_tiny_model(tmp_path):
    trec = write_tiny_trec(tmp_path / "trec")
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "probe"
    argv = ["--model", str(model), "--train", f"trec:{trec}", "--dev", f"trec:{trec}", "--out", str(out)]
    assert main([*argv, "--threads", "1"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["train_pairs"] == 6 and result["dev_pairs"] == 6 and result["dev_queries"] == 3
    for key in ("probe", "model", "lexical", "chance"):
        assert 0.0 <= result[f"{key}_ndcg@10_judged"] <= 1.0
    assert result["lexical_ndcg@10_judged"] > result["chance_ndcg@10_judged"]  # overlap orders these pools well
