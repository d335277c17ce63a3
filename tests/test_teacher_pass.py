"""The distillation teacher pass runs through `afrl batch-score`: the cache holds what the teacher scores, a killed
pass resumes from its finished shards, a failing record stops the pass loudly, and (slow) the Ray engine fills
the same cache as the local one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import afrl.batch_score
from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import Manifest, model_fingerprint
from afrl.testing import build_tiny_model, save_tiny_model
from training.config import parse_config
from training.distill import AfrlDistillConfig
from training.sources import training_records
from training.teacher_pass import read_cache, score_options, teacher_cache

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "distill_tiny.yaml"


@pytest.fixture
def teacher(tmp_path) -> Path:
    """A tiny teacher whose manifest budgets (16 query, 96 document tokens) differ from the config's (16, 48)."""
    path = save_tiny_model(tmp_path / "teacher", num_layers=2)
    _, tok = build_tiny_model(num_layers=2)
    builder = PromptBuilder(tok, max_query_tokens=16, max_document_tokens=96)
    Manifest.for_builder(builder, GradeScale(), kind="sft", base_model=None).write(path)
    return path


def config_for(tmp_path: Path, teacher: Path, *overrides: str) -> AfrlDistillConfig:
    argv = ["--config", str(CONFIG), "--teacher", str(teacher), "--output_dir", str(tmp_path / "student")]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--teacher_dtype", "float32", "--data", "rules:12:0"]
    return parse_config(AfrlDistillConfig, [*argv, *overrides])


def run(config: AfrlDistillConfig) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    instruction = Manifest.read(Path(config.teacher)).instruction
    return teacher_cache(
        training_records(config), config, instruction, model_fingerprint(Path(config.teacher)), tokenizer
    )


def test_the_cache_holds_the_teachers_own_grade_distribution_and_explanation(tmp_path, teacher):
    from afrl.scorer import load_scorer

    config = config_for(tmp_path, teacher, "--explanation_max_tokens", "6")
    records = training_records(config)
    cache = run(config)
    assert set(cache) == {r.id for r in records}
    scorer = load_scorer(str(teacher))
    # The teacher's own prompt settings, its document budget lowered to the config's 48 tokens.
    builder = PromptBuilder(scorer.tokenizer, scorer.builder.instruction, max_query_tokens=16, max_document_tokens=48)
    want = scorer.logits_for_prompts(builder.build_many([(r.query, r.document) for r in records])).softmax(-1)
    got = torch.tensor([cache[r.id]["grade_logits"] for r in records]).softmax(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for r in records:
        entry = cache[r.id]
        assert entry["grade"] == int(want[records.index(r)].argmax())
        # What follows the grade token: the contract's newline, then the explanation text, re-tokenized.
        text = entry["explanation"]
        assert scorer.tokenizer.decode(entry["explanation_ids"]) == ("\n" + text if text else "")
    assert not all(cache[r.id]["finished"] for r in records)  # 6 tokens cut most explanations of a random model
    # Appended once; the pass folder is gone once its rows are in the cache.
    (path,) = (tmp_path / "cache").glob("teacher-*.jsonl")
    assert len(path.read_text().splitlines()) == len(records)
    assert not list((tmp_path / "cache").glob("teacher-*.pass-*"))


def test_a_rerun_scores_only_missing_records_and_a_killed_pass_resumes_from_its_shards(tmp_path, teacher, monkeypatch):
    config = config_for(tmp_path, teacher, "--explanations", "false", "--teacher_shard_size", "4")
    real = afrl.batch_score.score_shard
    calls: list[int] = []

    def dies_on_the_third_shard(*a, **kw):
        calls.append(a[1][0].row)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(afrl.batch_score, "score_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    (work,) = (tmp_path / "cache").glob("teacher-*.pass-*")
    assert len(list((work / "scored").glob("part-*.parquet"))) == 2
    calls.clear()
    cache = run(config)
    assert calls == [8]  # only the unfinished shard (rows 8-11) is scored again
    assert len(cache) == 12 and not work.exists()
    calls.clear()
    assert run(config) == cache and calls == []  # complete: the teacher is not loaded at all
    bigger = config_for(
        tmp_path, teacher, "--explanations", "false", "--teacher_shard_size", "4", "--data", "rules:16:0"
    )
    assert len(run(bigger)) == 16 and calls == [0]  # the 4 new records, in one shard of their own


def test_a_record_the_teacher_fails_on_stops_the_pass_and_names_it(tmp_path, teacher, monkeypatch):
    config = config_for(tmp_path, teacher, "--explanations", "false")
    monkeypatch.setattr(
        afrl.batch_score, "_score_chunk", lambda reranker, chunk, opts: [(None, "scoring failed: boom")] * len(chunk)
    )
    with pytest.raises(RuntimeError, match=r"failed on 12 of 12 records .*boom.*delete .*pass-"):
        run(config)
    assert read_cache(next((tmp_path / "cache").glob("teacher-*.jsonl"), tmp_path / "none")) == {}


def test_the_pass_sends_the_configs_instruction_only_when_it_differs(tmp_path, teacher):
    config = config_for(tmp_path, teacher)
    own = Manifest.read(teacher).instruction
    opts = score_options(config, own)
    assert opts.instruction is None and opts.max_document_tokens == 48 and opts.dtype == "fp32"
    assert opts.settings["max_new_tokens"] == config.explanation_max_tokens and opts.explain
    assert score_options(config, "Grade it.").instruction == "Grade it."


def test_config_refuses_an_unknown_engine_or_dtype(tmp_path, teacher):
    with pytest.raises(ValueError, match="teacher_engine 'spark'"):
        config_for(tmp_path, teacher, "--teacher_engine", "spark")
    with pytest.raises(ValueError, match="teacher_dtype 'float16'"):
        config_for(tmp_path, teacher, "--teacher_dtype", "float16")


@pytest.mark.slow
def test_the_ray_engine_fills_the_same_cache(tmp_path, teacher):
    ray = pytest.importorskip("ray")
    local = run(config_for(tmp_path / "local", teacher, "--explanations", "false"))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    try:
        on_ray = run(config_for(tmp_path / "ray", teacher, "--explanations", "false", "--teacher_engine", "ray"))
    finally:
        ray.shutdown()
    assert json.dumps(on_ray, sort_keys=True) == json.dumps(local, sort_keys=True)
