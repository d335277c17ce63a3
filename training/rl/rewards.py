"""Per-step rewards of an AFRL completion, and the same rewards as TRL reward functions (one per component).

Every component is in [0, 1] and belongs to one or more steps (steps.py):

| component        | step(s)                      | value                                                          |
|------------------|------------------------------|----------------------------------------------------------------|
| `grade_exact`    | grade                        | 1 if the first line is the gold grade                          |
| `grade_distance` | grade                        | 1 - abs(pred - gold) / K, 0 if the first line is not a grade   |
| `grade_share`    | grade                        | `grade_exact` x the share of the record's rule in the rule     |
|                  |                              | world over the most common rule's (1 for exact_match, 0.035    |
|                  |                              | for the rarest; 0 without a rule). Off by default: the reward  |
|                  |                              | that tempts mode-seeking in the mode-balance study (issue 20)  |
| `format`         | intent, evidence, reasoning, verdict | 1 if the line is "<Field>: <non-empty>" for its field  |
| `evidence`       | evidence                     | 1 if the quoted Evidence is found in the document              |
| `rule`           | reasoning                    | 1 if the Reasoning names the record's rule (0 for every        |
|                  |                              | completion of a record without a rule: no signal in the group) |
| `verdict`        | verdict                      | 1 if "Verdict: v" with v equal to the first-line grade          |

A missing or malformed step gets 0, the minimum. The reward of step s is sum_c w_c * r_c[s]
(`step_rewards` weights). Plain GRPO (`advantage_mode: completion`) sees each component as one number per
completion, the mean over the steps it belongs to, summed with the same weights by TRL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from afrl.contract import EXPLANATION_FIELDS, GradeScale, normalize_for_match
from training.rl.steps import NUM_STEPS, completion_lines

COMPONENT_STEPS: dict[str, tuple[int, ...]] = {
    "grade_exact": (0,),
    "grade_distance": (0,),
    "grade_share": (0,),
    "format": (1, 2, 3, 4),
    "evidence": (2,),
    "rule": (3,),
    "verdict": (4,),
}
COMPONENTS = tuple(COMPONENT_STEPS)
DEFAULT_WEIGHTS: dict[str, float] = {
    "grade_exact": 1.0,
    "grade_distance": 1.0,
    "grade_share": 0.0,
    "format": 0.25,
    "evidence": 0.5,
    "rule": 0.5,
    "verdict": 0.5,
}
MIN_EVIDENCE_CHARS = 3  # a one-letter "quote" is found in every document; it must not earn the reward


@dataclass(frozen=True)
class Gold:
    """What the rewards of one completion are checked against."""

    grade: int
    document: str
    rule: str | None = None


def rule_mentions(rule: str) -> list[str]:
    """Forms of a rule name that count as citing it: as written, and with _ or - read as spaces."""
    forms = {rule, rule.replace("_", " "), rule.replace("-", " "), rule.replace("_", "-")}
    return [normalize_for_match(f) for f in forms if f.strip()]


def rule_share(rule: str | None) -> float:
    """A rule-world rule's share of the pairs over the most common rule's (1.0 for the head rule); 0 otherwise:
    a business metric weighted by traffic, which pays little for getting a rare case right."""
    from training.rule_world import RULES, RULES_BY_NAME

    known = RULES_BY_NAME.get(rule or "")
    return known.weight / max(r.weight for r in RULES) if known else 0.0


def _field_value(line: str | None, field: str) -> str | None:
    """The value of "<field>: value" on this line, or None when the line is not that field or is empty."""
    if line is None:
        return None
    label, sep, value = line.partition(":")
    if not sep or label.strip() != field or not value.strip():
        return None
    return value.strip()


def parse_grade(line: str | None, scale: GradeScale) -> int | None:
    if line is None:
        return None
    s = line.strip()
    return int(s) if s in scale.labels else None


def component_rewards(text: str, gold: Gold, scale: GradeScale) -> dict[str, list[float]]:
    """{component: [reward at step 0, ..., reward at step 4]} (0 at the steps a component does not belong to)."""
    lines = completion_lines(text)
    out = {c: [0.0] * NUM_STEPS for c in COMPONENTS}
    pred = parse_grade(lines[0], scale)
    if pred is not None:
        out["grade_exact"][0] = float(pred == gold.grade)
        out["grade_distance"][0] = 1.0 - abs(pred - gold.grade) / scale.max_grade
        out["grade_share"][0] = out["grade_exact"][0] * rule_share(gold.rule)
    values = [_field_value(lines[k], name) for k, name in enumerate(EXPLANATION_FIELDS, start=1)]
    for k, value in enumerate(values, start=1):
        out["format"][k] = float(value is not None)
    evidence = values[1]
    if evidence is not None:
        quote = normalize_for_match(evidence.strip().strip('"').strip())
        out["evidence"][2] = float(len(quote) >= MIN_EVIDENCE_CHARS and quote in normalize_for_match(gold.document))
    reasoning = values[2]
    if reasoning is not None and gold.rule:
        said = normalize_for_match(reasoning)
        out["rule"][3] = float(any(m in said for m in rule_mentions(gold.rule)))
    verdict = values[3]
    if verdict is not None and pred is not None:
        out["verdict"][4] = float(verdict in scale.labels and int(verdict) == pred)
    return out


def resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_WEIGHTS)
    for name, w in (weights or {}).items():
        if name not in COMPONENT_STEPS:
            raise ValueError(f"step_rewards has unknown component {name!r}; known: {', '.join(COMPONENTS)}")
        merged[name] = float(w)
    return merged


def step_reward_matrix(
    texts: Sequence[str], golds: Sequence[Gold], scale: GradeScale, weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(rewards (N, NUM_STEPS) weighted per step, {component: (N, NUM_STEPS) unweighted})."""
    per = [component_rewards(t, g, scale) for t, g in zip(texts, golds, strict=True)]
    comps = {c: torch.tensor([p[c] for p in per], dtype=torch.float32).view(len(per), NUM_STEPS) for c in COMPONENTS}
    total = sum(weights[c] * comps[c] for c in COMPONENTS)
    assert isinstance(total, torch.Tensor)
    return total, comps


def completion_level(component: str, per_step: Sequence[float]) -> float:
    steps = COMPONENT_STEPS[component]
    return sum(per_step[s] for s in steps) / len(steps)


def make_reward_funcs(scale: GradeScale) -> list[Any]:
    """One TRL reward function per component (named after it, so TRL logs `rewards/<component>/mean`)."""

    def make(component: str) -> Any:
        def reward(completions: list[str], grade: list[int], document: list[str], rule: list[str], **_: Any) -> list:
            return [
                completion_level(component, component_rewards(c, Gold(g, d, r or None), scale)[component])
                for c, g, d, r in zip(completions, grade, document, rule, strict=True)
            ]

        reward.__name__ = component
        return reward

    return [make(c) for c in COMPONENTS]
