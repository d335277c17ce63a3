"""Stepwise-GRPO pieces without a model: steps, rewards on crafted completions, advantages, mu(t), config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from afrl.contract import GradeScale
from afrl.testing import tiny_tokenizer
from training.rl.advantages import group_step_advantages, token_advantages
from training.rl.rewards import COMPONENTS, Gold, component_rewards, make_reward_funcs, resolve_weights
from training.rl.schedule import sft_coef_at
from training.rl.steps import NUM_STEPS, NewlineCounter, completion_lines, token_steps

SCALE = GradeScale()
DOC = "The Acme phone case fits the Acme X2 phone and is sold in black."
GOOD = (
    '1\nIntent: a phone case for the Acme X2\nEvidence: "fits the Acme X2 phone"\n'
    "Reasoning: accessory for product, not the phone itself\nVerdict: 1"
)


def test_well_formed_completion_earns_every_reward():
    r = component_rewards(GOOD, Gold(1, DOC, "accessory_for_product"), SCALE)
    assert r["grade_exact"] == [1.0, 0, 0, 0, 0]
    assert r["grade_distance"][0] == 1.0
    assert r["format"] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert r["evidence"][2] == 1.0 and r["rule"][3] == 1.0 and r["verdict"][4] == 1.0


def test_wrong_grade_gets_distance_credit_only():
    r = component_rewards(GOOD.replace("1\n", "3\n", 1).replace("Verdict: 1", "Verdict: 3"), Gold(1, DOC), SCALE)
    assert r["grade_exact"][0] == 0.0
    assert r["grade_distance"][0] == pytest.approx(1 - 2 / 3)
    assert r["verdict"][4] == 1.0  # consistent with its own first token


def test_malformed_completion_gets_the_minimum_for_missing_steps():
    r = component_rewards("the passage is relevant\nVerdict: 1", Gold(1, DOC, "accessory_for_product"), SCALE)
    assert all(sum(v) == 0.0 for v in r.values())
    truncated = component_rewards("1\nIntent: a case", Gold(1, DOC), SCALE)
    assert truncated["grade_exact"][0] == 1.0 and truncated["format"] == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_inconsistent_verdict_loses_only_the_verdict_reward():
    r = component_rewards(GOOD.replace("Verdict: 1", "Verdict: 2"), Gold(1, DOC), SCALE)
    assert r["verdict"][4] == 0.0 and r["format"][4] == 1.0 and r["grade_exact"][0] == 1.0


def test_evidence_not_in_document():
    r = component_rewards(GOOD.replace("fits the Acme X2 phone", "is waterproof to 10 m"), Gold(1, DOC), SCALE)
    assert r["evidence"][2] == 0.0 and r["format"][2] == 1.0
    tiny_quote = component_rewards(GOOD.replace("fits the Acme X2 phone", "a"), Gold(1, DOC), SCALE)
    assert tiny_quote["evidence"][2] == 0.0  # one letter is in every document; no reward for it


def test_rule_must_be_the_records_rule():
    wrong = component_rewards(GOOD, Gold(1, DOC, "brand_mismatch"), SCALE)
    assert wrong["rule"][3] == 0.0
    assert component_rewards(GOOD, Gold(1, DOC, "accessory-for-product"), SCALE)["rule"][3] == 1.0
    assert component_rewards(GOOD, Gold(1, DOC, None), SCALE)["rule"][3] == 0.0


def test_reward_funcs_are_completion_level_means():
    funcs = {f.__name__: f for f in make_reward_funcs(SCALE)}
    assert set(funcs) == set(COMPONENTS)
    half = GOOD.replace("Intent: a phone case for the Acme X2", "Intnt: x").replace("Verdict: 1", "Verdict:")
    out = funcs["format"](completions=[GOOD, half], grade=[1, 1], document=[DOC, DOC], rule=["", ""])
    assert out == [1.0, 0.5]


def test_unknown_weight_is_refused():
    with pytest.raises(ValueError, match="unknown component"):
        resolve_weights({"grade": 1.0})


def test_token_steps_follow_the_lines_of_the_target():
    tok = tiny_tokenizer()
    ids = [*tok.encode(GOOD, add_special_tokens=False), tok.eos_token_id]
    steps = token_steps(ids, NewlineCounter(tok))
    assert steps[0] == 0 and steps[-1] == NUM_STEPS - 1
    assert steps == sorted(steps)  # monotone
    lines = completion_lines(GOOD)
    for k in range(1, NUM_STEPS):
        text = tok.decode([t for t, s in zip(ids, steps, strict=True) if s == k], skip_special_tokens=True)
        assert text.strip("\n") == lines[k]


def test_token_steps_fold_extra_lines_into_the_last_step():
    newlines = {10: 1}
    steps = token_steps([5, 10, 6, 10, 6, 10, 6, 10, 6, 10, 6, 10, 6], lambda t: newlines.get(t, 0))
    # the newline after the grade opens step 1; the newline ending a line stays in that line's step
    assert steps == [0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4]
    assert completion_lines("a\nb") == ["a", "b", None, None, None]
    assert completion_lines("0\n1\n2\n3\n4\n5")[-1] == "4\n5"


def test_group_step_advantages_match_hand_computed_values():
    # one group of 3 completions, 2 steps: step 0 rewards (1, 0, 0), step 1 rewards (2, 2, 5)
    rewards = torch.tensor([[1.0, 2.0], [0.0, 2.0], [0.0, 5.0]])
    adv = group_step_advantages(rewards, num_generations=3)
    std0 = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of (1, 0, 0)
    std1 = math.sqrt((1 + 1 + 4) / 2)  # of (2, 2, 5): mean 3
    expected = torch.tensor(
        [
            [(2 / 3) / (std0 + 1e-4), -1 / (std1 + 1e-4)],
            [(-1 / 3) / (std0 + 1e-4), -1 / (std1 + 1e-4)],
            [(-1 / 3) / (std0 + 1e-4), 2 / (std1 + 1e-4)],
        ]
    )
    assert torch.allclose(adv, expected, atol=1e-6)
    unscaled = group_step_advantages(rewards, num_generations=3, scale=False)
    assert torch.allclose(unscaled[:, 1], torch.tensor([-1.0, -1.0, 2.0]))


def test_groups_are_normalised_separately_and_constant_steps_get_zero():
    rewards = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    adv = group_step_advantages(rewards, num_generations=2)
    assert adv[0, 0] == 0 and adv[1, 0] == 0
    assert adv[2, 0] < 0 < adv[3, 0]
    with pytest.raises(ValueError, match="groups"):
        group_step_advantages(torch.zeros(3, 1), num_generations=2)


def test_token_advantages_use_each_tokens_step():
    step_adv = torch.tensor([[1.0, -2.0, 3.0]])
    step_ids = torch.tensor([[0, 1, 1, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert token_advantages(step_adv, step_ids, mask).tolist() == [[1.0, -2.0, -2.0, 3.0, 0.0]]


@pytest.mark.parametrize(
    ("schedule", "mid", "end"),
    [("constant", 1.0, 1.0), ("linear", 0.55, 0.1), ("cosine", 0.55, 0.1)],
)
def test_sft_coef_schedules(schedule, mid, end):
    assert sft_coef_at(0, 10, 1.0, 0.1, schedule) == pytest.approx(1.0)
    assert sft_coef_at(5, 10, 1.0, 0.1, schedule) == pytest.approx(mid)
    assert sft_coef_at(10, 10, 1.0, 0.1, schedule) == pytest.approx(end)
    if schedule == "cosine":
        assert sft_coef_at(2, 10, 1.0, 0.1, schedule) > sft_coef_at(2, 10, 1.0, 0.1, "linear")
    with pytest.raises(ValueError, match="exponential"):
        sft_coef_at(0, 10, 1.0, 0.1, "exponential")


def test_config_fields_and_checks(tmp_path: Path):
    from training.config import parse_config
    from training.rl.config import AfrlGRPOConfig

    base = ["--output_dir", str(tmp_path), "--data", "rules:8", "--use_cpu", "true", "--report_to", "none"]
    cfg = parse_config(AfrlGRPOConfig, [*base, "--kl_coef", "0.2", "--step_rewards", '{"rule": 3}'])
    assert cfg.beta == 0.2 and cfg.weights["rule"] == 3.0 and cfg.weights["grade_exact"] == 1.0
    assert cfg.sft_coef_final == cfg.sft_coef
    for bad in (["--advantage_mode", "token"], ["--sft_coef_schedule", "step"], ["--kl_coef", "-1"]):
        with pytest.raises(ValueError):
            parse_config(AfrlGRPOConfig, [*base, *bad])
