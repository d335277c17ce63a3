"""The TRL-free RL loop (training/rl/loop.py) on tiny causal and prefix LMs: sampling, the surrogate's direction,
TRL's completion-level reward, the KL and SFT terms, the written model, the study's plain engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from afrl.manifest import load_verified
from afrl.models import load_model
from afrl.scorer import load_scorer
from afrl.testing import save_tiny_model
from training.data import Record
from training.rl import loop
from training.rl.loop import PlainGRPO, PlainRLConfig, train_rl_plain
from training.rl.rewards import COMPONENTS, Gold, make_reward_funcs
from training.rl.rollouts import contract_builder, sample_group, sample_groups

G = 4
ONLY_GRADE = {c: 0.0 for c in COMPONENTS} | {"grade_exact": 1.0}


def records(n: int = 4) -> list[Record]:
    return [
        Record(f"r{i}", f"running shoes size {40 + i}", f"Running shoes for men, size {40 + i}.", i % 4)
        for i in range(n)
    ]


@pytest.fixture(scope="module", params=["qwen3", "bert"])
def model_dir(request, tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp(request.param) / "m", arch=request.param)


def config(model_dir: Path, tmp_path: Path, **kw) -> PlainRLConfig:
    base = dict(
        model=str(model_dir),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=G,
        num_generations=G,
        max_completion_length=6,
        learning_rate=1e-3,
        max_query_tokens=16,
        max_document_tokens=32,
        device="cpu",
    )
    return PlainRLConfig(**(base | kw))


def engine(model_dir: Path, cfg: PlainRLConfig) -> PlainGRPO:
    model, tok, folder = load_model(str(model_dir))
    builder, scale = contract_builder(tok, folder, cfg)
    return PlainGRPO(cfg, model, tok, builder, scale)


def test_sampling_keeps_the_end_token_stops_at_the_limit_and_follows_its_seed(model_dir):
    model, tok, _ = load_model(str(model_dir))
    prompt = tok.encode("a query and a document", add_special_tokens=False)
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = sample_group(model, prompt, 3, 5, 1.0, end_ids=set(), generator=torch.Generator().manual_seed(1))
    assert [len(r) for r in rows] == [5, 5, 5]
    again = sample_group(model, prompt, 3, 5, 1.0, end_ids=set(), generator=torch.Generator().manual_seed(1))
    assert again == rows
    ended = sample_group(model, prompt, 3, 5, 1.0, end_ids=set(range(vocab)))
    assert [len(r) for r in ended] == [1, 1, 1]  # the end token is the row's last, and it is kept
    with pytest.raises(ValueError, match="temperature"):
        sample_group(model, prompt, 2, 5, 0.0, end_ids=set())


def test_a_batch_of_left_padded_prompts_samples_as_each_prompt_alone(model_dir):
    model, tok, _ = load_model(str(model_dir))
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("a short query", "a much longer query about shoes")]
    assert len(prompts[0]) != len(prompts[1])  # so the batch is padded
    near_greedy = dict(max_new_tokens=6, temperature=1e-4, end_ids=set())
    together = sample_groups(model, prompts, 2, **near_greedy)
    alone = [r for p in prompts for r in sample_group(model, p, 2, **near_greedy)]
    assert together == alone


def test_grade_first_draws_only_grade_tokens_first(model_dir, tmp_path):
    e = engine(model_dir, config(model_dir, tmp_path))
    prompt = e.tokenizer.encode("a query and a document", add_special_tokens=False)
    rows = sample_groups(e.model, [prompt], 16, 3, 1.0, end_ids=set(), first_ids=e.grade_ids)
    assert all(r[0] in e.grade_ids for r in rows) and len({r[1] for r in rows}) > 1  # then the whole vocabulary


def _logp(e: PlainGRPO, prompt: list[int], rows: list[list[int]]) -> torch.Tensor:
    ids, mask, labels = loop._sequences([prompt] * len(rows), rows, e.pad_id)
    with torch.no_grad():
        nll, keep = e.token_nll(e.model, ids, mask, labels)
    row_of = torch.arange(len(rows))[:, None].expand_as(keep)[keep]
    return -torch.zeros(len(rows)).index_add_(0, row_of, nll)


@pytest.mark.parametrize("mode, grade_first", [("stepwise", False), ("completion", False), ("stepwise", True)])
def test_one_step_makes_the_rewarded_completion_likelier_and_the_others_less(
    model_dir, tmp_path, monkeypatch, mode, grade_first
):
    cfg = config(
        model_dir, tmp_path, step_rewards=ONLY_GRADE, learning_rate=3e-3, advantage_mode=mode, grade_first=grade_first
    )
    e = engine(model_dir, cfg)
    record = records(1)[0]  # gold grade 0
    eos = int(e.tokenizer.eos_token_id)
    newline = e.tokenizer.encode("\n", add_special_tokens=False)
    rows = [[e.grade_ids[0], *newline, eos]] + [[e.grade_ids[2], *newline, eos] for _ in range(G - 1)]
    monkeypatch.setattr(loop, "sample_groups", lambda *a, **k: [list(r) for r in rows])
    prompt = e.builder.build(record.query, record.document).input_ids
    before = _logp(e, prompt, rows[:2])
    entry = e.step(0, [record], [prompt], [rows[0]])
    after = _logp(e, prompt, rows[:2])
    assert entry["reward"] == pytest.approx(1 / G) and entry["frac_reward_zero_std"] == 0.0
    assert after[0] > before[0] and after[1] < before[1]
    assert entry["grades/p0"] == pytest.approx(1 / G) and entry["recall/grade_0"] == pytest.approx(1 / G)


def test_plain_grpo_sums_the_components_as_trl_sums_its_reward_functions(model_dir, tmp_path):
    weights = {"grade_exact": 1.0, "grade_distance": 0.5, "format": 0.25, "evidence": 2.0, "verdict": 0.75}
    e = engine(model_dir, config(model_dir, tmp_path, step_rewards=weights, advantage_mode="completion"))
    doc = "Running shoes for men, size 42."
    texts = [
        '2\nIntent: shoes\nEvidence: "Running shoes for men"\nReasoning: close\nVerdict: 2',
        "3\nIntent: shoes\nVerdict: 1",
        "not a grade",
    ]
    golds = [Gold(2, doc, None), Gold(1, doc, "size_mismatch"), Gold(0, doc, None)]
    _, total = e.rewards(texts, golds)
    resolved = e.weights
    funcs = make_reward_funcs(e.scale)
    kwargs = dict(grade=[g.grade for g in golds], document=[g.document for g in golds], rule=["", "size_mismatch", ""])
    expected = [sum(resolved[f.__name__] * f(texts, **kwargs)[i] for f in funcs) for i in range(len(texts))]
    assert total.tolist() == pytest.approx(expected)
    assert total[0] > total[1] > total[2] == 0.0


def test_the_loop_writes_a_scorable_model_its_log_and_calls_the_callbacks(model_dir, tmp_path):
    calls: list[tuple[str, int]] = []

    class Spy:
        def on_train_begin(self, args, state, control, model=None, processing_class=None):
            assert model is not None and processing_class is not None
            calls.append(("begin", state.global_step))

        def on_step_end(self, args, state, control, **kw):
            calls.append(("step", state.global_step))

        def on_train_end(self, args, state, control, **kw):
            calls.append(("end", state.global_step))

    cfg = config(model_dir, tmp_path, sft_coef=0.5, kl_coef=0.1, per_device_train_batch_size=2 * G)
    out = train_rl_plain(cfg, records(3), callbacks=[Spy()])
    assert calls == [("begin", 0), ("step", 1), ("step", 2), ("end", 2)]
    manifest = load_verified(out)
    assert manifest.kind == "rl" and "TRL-free" in manifest.provenance["engine"]
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log] == [1, 2]
    for key in ("loss", "reward", "frac_reward_zero_std", "sft_loss", "kl", "mu", "grades/entropy"):
        assert all(key in e for e in log), key
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its reference before the first update
    assert log[1]["learning_rate"] < log[0]["learning_rate"]
    (result,) = load_scorer(str(out)).score([("running shoes", "Running shoes for men.")])
    assert 0 <= result.grade <= 3


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"num_generations": 4, "per_device_train_batch_size": 6}, "multiple of num_generations"),
        ({"scale_rewards": "batch"}, "scale_rewards"),
        ({"num_generations": 1, "per_device_train_batch_size": 1}, "num_generations must be >= 2"),
        ({"advantage_mode": "token"}, "advantage_mode"),
        ({"step_rewards": {"grade_exactly": 1.0}}, "unknown component"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        PlainRLConfig(model="m", output_dir=str(tmp_path), **({"num_generations": 2} | kw))
    with pytest.raises(ValueError, match="unknown plain-RL settings"):
        PlainRLConfig.from_mapping({"model": "m", "output_dir": "o", "use_vllm": True})


def test_the_study_runs_its_rl_arms_on_the_plain_engine(tmp_path):
    from tests.test_rl_study import tiny_study
    from training.study import run_study

    study = tiny_study(
        tmp_path,
        save_tiny_model(tmp_path / "tiny", arch="bert"),
        engine="plain",
        device="cpu",
        rl_max_steps=2,
        rl_prompts_per_step=1,
        num_generations=2,
        max_completion_length=6,
        curve_every=1,
        arms={"sft": None, "grpo": {"advantage_mode": "completion"}, "stepwise_sft": {"sft_coef": 0.5}},
        explain_sample=1,
        explain_tokens=8,
        results_json=str(tmp_path / "mode_balance.json"),
        results_md=str(tmp_path / "RESULTS.md"),
        notes_md=None,
        plot_png=None,
    )
    run_study(study)
    summary = json.loads((tmp_path / "mode_balance.json").read_text())
    assert [e["arm"] for e in summary["entries"]] == ["sft", "grpo", "stepwise_sft"]
    arm = tmp_path / "study" / "rules" / "seed0" / "stepwise_sft"
    assert "TRL-free" in load_verified(arm).provenance["engine"]
    assert [p["step"] for p in json.loads((arm / "curve.json").read_text())["points"]] == [0, 1, 2]
    assert json.loads((arm / "eval.json").read_text())["rl_train"]["sft_loss"] > 0


def test_the_plain_engine_refuses_trec_lora():
    from training.study import AfrlStudyConfig

    with pytest.raises(ValueError, match="trec_lora_r: 0"):
        AfrlStudyConfig(datasets=["trec"], engine="plain", trec_lora_r=16)
    with pytest.raises(ValueError, match="engine must be one of"):
        AfrlStudyConfig(engine="vllm")
    with pytest.raises(ValueError, match="grade_first needs engine: plain"):
        AfrlStudyConfig(grade_first=True)


def test_plain_sft_batches_are_exact_in_number_and_size_and_cover_each_epoch():
    from training.plain_sft import sft_batches

    batches = sft_batches(10, 4, 7, seed=0)
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # one epoch, then the next
    assert sft_batches(10, 4, 7, seed=0) == batches != sft_batches(10, 4, 7, seed=1)
    with pytest.raises(ValueError, match="need records"):
        sft_batches(0, 4, 7, seed=0)


def test_the_study_config_is_read_from_yaml_without_trl_and_refuses_typos(tmp_path):
    from training.study import config_from_yaml

    good = tmp_path / "s.yaml"
    good.write_text("engine: plain\nseeds: [3]\nrl_max_steps: 5\n")
    config = config_from_yaml(good, output_dir=str(tmp_path / "o"))
    assert (config.engine, config.seeds, config.rl_max_steps, config.output_dir) == (
        "plain",
        [3],
        5,
        str(tmp_path / "o"),
    )
    bad = tmp_path / "b.yaml"
    bad.write_text("engine: plain\nrl_max_step: 5\n")
    with pytest.raises(ValueError, match="rl_max_step"):
        config_from_yaml(bad)


def test_python_m_training_study_run_takes_overrides_and_renders_finished_runs(tmp_path):
    from training.study import main

    run_dir = tmp_path / "study" / "rules" / "seed0" / "grpo"
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(
        json.dumps({"dataset": "rules", "arm": "grpo", "seed": 0, "spec": {}, "tail_rule_accuracy": 0.25})
    )
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"engine: plain\noutput_dir: {tmp_path / 'study'}\nseeds: [0]\nrules_train: 8\nrules_dev: 8\n")
    out = tmp_path / "mb.json"
    sets = [f"results_json={out}", f"results_md={tmp_path / 'R.md'}", "notes_md=null", "plot_png=null"]
    assert main(["run", "--config", str(cfg), "--set", "render_only=true", *sets]) == 0
    assert [e["arm"] for e in json.loads(out.read_text())["entries"]] == ["grpo"]
    with pytest.raises(SystemExit):
        main(["run", "--config", str(cfg), "--set", "render_only"])
