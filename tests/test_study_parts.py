"""The mode-balance study's parts (issue 20): the from-scratch rule-world LM, the frequency-weighted reward, the
paired intervals and verdict on hand-made results, and the rule-accuracy curve with its plot."""

from __future__ import annotations

import json
import math

import pytest

from afrl.contract import GradeScale, PromptBuilder
from training.rl.rewards import DEFAULT_WEIGHTS, Gold, component_rewards, rule_share
from training.rule_world import RULES, TAIL_RULES, generate_records
from training.study_curve import RuleCurve, curve_records, mean_curves, plot_curves, read_curve
from training.study_stats import paired_difference, stats, t_interval, verdicts

SCALE = GradeScale()


@pytest.fixture(scope="module")
def rule_lm():
    from training.rule_lm import build_rule_lm

    return build_rule_lm(seed=0, hidden_size=64, num_layers=1, vocab_size=400)


def test_rule_lm_tokenizer_keeps_the_contract_and_round_trips_records(rule_lm):
    model, tok = rule_lm
    ids = SCALE.token_ids(tok)
    assert len(set(ids)) == len(SCALE.labels)  # one token per grade
    record = generate_records(5, seed=3)[2]
    assert tok.decode(tok.encode(record.explanation)) == record.explanation
    prompt = PromptBuilder(tok, "Grade it.", 32, 64).build(record.query, record.document)
    assert prompt.input_ids and len(prompt.input_ids) < 200
    assert model.config.vocab_size == len(tok) <= 400


def test_rule_lm_seed_changes_the_weights_not_the_vocabulary():
    from training.rule_lm import build_rule_lm

    (a, ta), (b, tb) = (build_rule_lm(seed=s, hidden_size=64, num_layers=1, vocab_size=400) for s in (0, 1))
    assert ta.get_vocab() == tb.get_vocab()
    assert not a.model.embed_tokens.weight.equal(b.model.embed_tokens.weight)


def test_rule_lm_refuses_a_width_that_is_not_whole_heads():
    from training.rule_lm import build_rule_lm

    with pytest.raises(ValueError, match="multiple of head_dim 64"):
        build_rule_lm(hidden_size=100)


def test_grade_share_pays_by_the_rules_traffic_and_is_off_by_default():
    top = max(RULES, key=lambda r: r.weight)
    rare = min(RULES, key=lambda r: r.weight)
    right = component_rewards(f"{top.grade}\n", Gold(top.grade, "doc", top.name), SCALE)
    assert right["grade_share"][0] == 1.0
    tail = component_rewards(f"{rare.grade}\n", Gold(rare.grade, "doc", rare.name), SCALE)
    assert tail["grade_share"][0] == pytest.approx(rare.weight / top.weight) and tail["grade_exact"][0] == 1.0
    wrong = component_rewards(f"{(rare.grade + 1) % 4}\n", Gold(rare.grade, "doc", rare.name), SCALE)
    assert wrong["grade_share"][0] == 0.0
    assert rule_share(None) == 0.0 and rule_share("not_a_rule") == 0.0
    assert DEFAULT_WEIGHTS["grade_share"] == 0.0


def test_t_interval_matches_the_t_table():
    lo, hi = t_interval(2.0, 1.0, 3)  # t(0.975, 2) = 4.303
    assert (hi - lo) / 2 == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert all(math.isnan(x) for x in t_interval(1.0, 0.0, 1))
    assert stats([0.5], [0])["ci"] is None


def entry(arm: str, tails: list[float], sft_coef: float | None = None) -> dict:
    spec = None if arm == "sft" else {"advantage_mode": "stepwise", "sft_coef": sft_coef or 0.0}
    return {"dataset": "rules", "arm": arm, "spec": spec, "tail_rule_accuracy": stats(tails, [0, 1, 2])}


def test_paired_difference_uses_the_seeds_both_arms_have():
    a = stats([0.5, 0.6, 0.7], [0, 1, 2])
    b = stats([0.4, 0.5], [1, 2])
    d = paired_difference(a, b)
    assert d is not None and d["seeds"] == [1, 2] and d["mean"] == pytest.approx(0.2)


def test_verdict_on_hand_made_results():
    entries = [
        entry("sft", [0.70, 0.72, 0.68]),
        entry("grpo", [0.40, 0.44, 0.38]),  # forgets, consistently
        entry("stepwise_sft", [0.66, 0.70, 0.65], sft_coef=0.5),  # keeps them
        entry("stepwise_sft_low", [0.30, 0.70, 0.45], sft_coef=0.1),  # noisy: no call
    ]
    lines = verdicts(entries)
    text = "\n".join(lines)
    assert "grpo vs sft on tail_rule_accuracy: **lower**" in text
    assert "stepwise_sft vs grpo on tail_rule_accuracy: **higher**" in text
    assert "stepwise_sft_low vs grpo on tail_rule_accuracy: **no difference detected**" in text
    keep = next(x for x in lines if x.startswith("rules: stepwise_sft vs grpo"))
    assert "a 0.1 difference would have been seen" in keep
    noisy = next(x for x in lines if x.startswith("rules: stepwise_sft_low vs grpo"))
    assert "too wide" in noisy


def test_curve_set_keeps_every_tail_record():
    dev = generate_records(400, seed=5)
    picked = curve_records(dev, head_records=20)
    tails = [r for r in dev if r.rule in TAIL_RULES]
    assert [r for r in picked if r.rule in TAIL_RULES] == tails
    assert len(picked) == len(tails) + 20


def test_rule_curve_scores_at_start_every_k_steps_and_end(rule_lm, tmp_path):
    model, tok = rule_lm
    builder = PromptBuilder(tok, "Grade it.", 32, 64)
    dev = curve_records(generate_records(200, seed=6), head_records=8)
    curve = RuleCurve(dev, builder, SCALE, every=2, out=tmp_path / "curve.json")

    class State:
        global_step = 0

    state = State()
    model.train()
    curve.on_train_begin(None, state, None, model=model, processing_class=tok)
    for step in (1, 2, 3):
        state.global_step = step
        curve.on_step_end(None, state, None, model=model, processing_class=tok)
    curve.on_train_end(None, state, None, model=model, processing_class=tok)
    points = read_curve(tmp_path)
    assert [p["step"] for p in points] == [0, 2, 3]
    assert all(0.0 <= p["tail_rule_accuracy"] <= 1.0 for p in points)
    assert model.training  # put back in training mode
    assert json.loads((tmp_path / "curve.json").read_text())["records"] == len(dev)


def test_mean_curves_and_plot(tmp_path):
    def c(values):
        return [{"step": 5 * i, "tail_rule_accuracy": v, "head_rule_accuracy": 0.9} for i, v in enumerate(values)]

    curves = {"grpo": [c([0.6, 0.4]), c([0.6, 0.2, 0.1])], "stepwise_sft": [c([0.6, 0.6])]}
    means = mean_curves(curves, "tail_rule_accuracy")
    assert [p[0] for p in means["grpo"]] == [0, 5]  # steps every seed has
    assert means["grpo"][1][1] == pytest.approx(0.3)
    png = plot_curves(curves, tmp_path / "curves.png", "test")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves({}, tmp_path / "none.png", "empty") is None
