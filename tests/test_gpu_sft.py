"""training/gpu_sft.py on CPU with a tiny model: prepare -> train -> finish gives a model `afrl eval` can load."""

from __future__ import annotations

import json

import torch

from afrl.manifest import load_verified
from afrl.scorer import load_scorer
from afrl.testing import save_tiny_model
from tests.test_eval import write_tiny_trec
from training.data import read_jsonl
from training.gpu_sft import main


def test_prepare_train_finish_on_a_tiny_model(tmp_path):
    trec = write_tiny_trec(tmp_path / "trec")
    tiny = save_tiny_model(tmp_path / "tiny")
    data, adapter = tmp_path / "data", tmp_path / "adapter"
    assert main(["prepare", "--out", str(data), "--data", f"trec:{trec}"]) == 0
    assert len(read_jsonl(data / "train.jsonl")) == 6

    argv = ["train", "--model", str(tiny), "--data", str(data), "--out", str(adapter), "--epochs", "3"]
    assert (
        main(
            [
                *argv,
                "--batch",
                "2",
                "--lr",
                "1e-2",
                "--log-every",
                "1",
                "--ranking-weight",
                "1",
                "--trec-dir",
                str(trec),
            ]
        )
        == 0
    )
    info = json.loads((adapter / "gpu_run.json").read_text())
    assert info["records"] == 4 and info["steps"] == 6 and info["stopped"] is None  # 2 query groups x 3 epochs
    assert info["curve"][-1]["loss"] < info["curve"][0]["loss"]
    assert 0.0 <= info["eval"]["ndcg@10_judged"] <= 1.0  # the dev split of the tiny folder, scored in memory
    assert (adapter / "eval" / "metrics.json").is_file() and (adapter / "eval" / "run.trec").is_file()

    assert main(["finish", "--adapter", str(adapter), "--base", str(tiny)]) == 0
    manifest = load_verified(adapter)
    assert manifest.base_model == str(tiny) and manifest.max_document_tokens == 256
    trained = load_scorer(str(adapter))
    base = load_scorer(str(tiny))
    pair = [("running shoes size 42", "Trailmax running shoes. Size: EU 42.")]
    assert not torch.allclose(
        torch.tensor(trained.score(pair)[0].probabilities), torch.tensor(base.score(pair)[0].probabilities)
    )
