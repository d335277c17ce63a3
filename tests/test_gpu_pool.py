"""training/gpu_pool.py on CPU with a tiny model and a stub-teacher pool: train -> finish gives a model that
`afrl eval` and `afrl ship` can load, and training moves the student's ranking toward the teacher's."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from afrl.layers import keep_layers
from afrl.manifest import load_verified
from afrl.models import load_model
from afrl.scorer import load_scorer
from afrl.testing import save_tiny_model
from tests.test_pool_distill import BagOfWordsTeacher, _group_agreement, _pool_config, folders  # noqa: F401
from training.gpu_pool import main, parse_layers
from training.pools import build_pool, read_pool


def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3] and parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("0-2", 30) == [0, 1, 2] and parse_layers("0,2,4", 30) == [0, 2, 4]
    with pytest.raises(ValueError, match=r"within 0\.\.3"):
        parse_layers("2-5", 4)
    with pytest.raises(ValueError, match="distinct"):
        parse_layers("1,1", 4)


@pytest.mark.parametrize("lora_r", [8, 0])
def test_train_finish_moves_the_student_toward_the_teacher(folders, tmp_path, lora_r):  # noqa: F811
    pool_dir = tmp_path / "pool"
    build_pool(_pool_config(folders, pool_dir, groups_per_judged_query=3), teacher=BagOfWordsTeacher())
    tiny = save_tiny_model(tmp_path / "tiny", num_layers=3)
    out = tmp_path / "student"
    argv = ["train", "--model", str(tiny), "--pool", str(pool_dir), "--out", str(out), "--layers", "0-1"]
    argv += ["--lora-r", str(lora_r), "--epochs", "10", "--batch", "8", "--group-size", "4", "--lr", "3e-3"]
    argv += ["--alpha", "0.9", "--listwise-weight", "3", "--explanation-share", "0.2", "--max-query-tokens", "16"]
    argv += ["--max-document-tokens", "32", "--log-every", "5", "--trec-dir", str(folders["judged"])]
    assert main(argv) == 0
    info = json.loads((out / "gpu_run.json").read_text())
    assert info["layers"] == [0, 1] and info["base_layers"] == 3 and info["stopped"] is None
    assert info["steps"] == info["planned_steps"] > 0
    assert {"kl", "list", "nll", "spread"} <= set(info["curve"][-1])
    assert 0.0 <= info["eval"]["ndcg@10"] <= 1.0 and (out / "eval" / "run.trec").is_file()

    assert main(["finish", "--student", str(out), "--base", str(tiny)]) == 0
    manifest = load_verified(out)
    assert manifest.kind == "distill" and manifest.extra["teacher"] == "stub"
    assert manifest.extra["pool"]["pairs_trained"] == info["pairs_trained"] > 0
    assert "non-commercial" in manifest.provenance["license"]
    if lora_r:
        assert manifest.extra["num_layers"] == [0, 1]  # an adapter over the base cut to its first two layers
    else:  # a whole folder: the kept layers, trained; the frozen embeddings are the base's, bit for bit (bf16)
        assert "num_layers" not in manifest.extra
        saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny / "model.safetensors"))
        key = "model.embed_tokens.weight"
        assert torch.equal(saved[key], base[key].to(torch.bfloat16))
        up = "model.layers.0.mlp.up_proj.weight"
        assert not torch.equal(saved[up], base[up].to(torch.bfloat16))
    rows = read_pool(pool_dir)
    student_cut = tmp_path / "cut"  # the untrained start: the tiny base cut to the same two layers
    model, tok, _ = load_model(str(tiny))
    keep_layers(model, [0, 1]).save_pretrained(student_cut)
    tok.save_pretrained(student_cut)
    before = _group_agreement(student_cut, rows, 4)
    after = _group_agreement(out, rows, 4)
    assert after < 0.7 * before, (before, after)
    assert load_scorer(str(out)).score([("saturn rings", "saturn rings planet")])[0].score >= 0.0


def test_batch_must_be_whole_groups(folders, tmp_path):  # noqa: F811
    tiny = save_tiny_model(tmp_path / "tiny", num_layers=2)
    argv = ["train", "--model", str(tiny), "--pool", str(tmp_path), "--out", str(tmp_path / "o"), "--batch", "6"]
    with pytest.raises(ValueError, match="multiple of --group-size 8"):
        main(argv)


def test_a_prefix_lm_student_trains_through_the_same_loop(folders, tmp_path):  # noqa: F811
    """The shipped default is a prefix LM (BERT); `scripts/gpu_student_job.sh` continues it with `--model
    afrl/shipped/minilm-prefix-student --lora-r 0`. On a tiny BERT: a whole folder comes out, its embeddings the
    start's, its layers trained, and its ranking moves toward the teacher's."""
    pool_dir = tmp_path / "pool"
    build_pool(_pool_config(folders, pool_dir, groups_per_judged_query=3), teacher=BagOfWordsTeacher())
    tiny = save_tiny_model(tmp_path / "tiny-bert", arch="bert")
    out = tmp_path / "student"
    argv = ["train", "--model", str(tiny), "--pool", str(pool_dir), "--out", str(out), "--lora-r", "0"]
    argv += ["--epochs", "10", "--batch", "8", "--group-size", "4", "--lr", "3e-3", "--alpha", "0.9"]
    argv += ["--listwise-weight", "3", "--explanation-share", "0.2", "--max-query-tokens", "16"]
    argv += ["--max-document-tokens", "32", "--log-every", "5", "--trec-dir", str(folders["judged"])]
    assert main(argv) == 0
    assert main(["finish", "--student", str(out), "--base", str(tiny)]) == 0
    assert load_verified(out).kind == "distill"
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny / "model.safetensors"))
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(saved[key], base[key].to(torch.bfloat16))
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(saved[query], base[query].to(torch.bfloat16))
    rows = read_pool(pool_dir)
    assert _group_agreement(out, rows, 4) < 0.7 * _group_agreement(tiny, rows, 4)
