"""Intervals and the computed verdict of the mode-balance study (training/study.py).

Arms of one seed start from the same SFT model (SFT seeds vary across seeds), so arms are compared *paired by
seed*: the difference of two arms' tail-rule accuracy at each seed, its mean and a Student-t 95 % interval over
seeds (scipy.stats.t: the t quantile for n - 1 degrees of freedom; with 3 seeds it is 4.30, so an interval is
wide unless the seeds agree). The verdict states the sign only when the interval excludes 0, and says whether the
study had the power the issue asks for: an interval half-width of at most 0.1, so that a 0.1 difference would
have been seen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

LEVEL = 0.95
POWER_HALF_WIDTH = 0.1  # the difference the study must be able to see (issue 20)


def stats(values: Sequence[float], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean, std, the t interval of the mean, and the values with their seeds (for paired comparisons)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    lo, hi = t_interval(mean, std, len(values))
    ci = None if math.isnan(lo) else [lo, hi]  # JSON has no NaN
    return {"mean": mean, "std": std, "n": len(values), "ci": ci, "values": list(values), "seeds": list(seeds)}


def t_interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided Student-t interval of a mean of n values; (nan, nan) for fewer than two."""
    if n < 2:
        return math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """`stats` of a - b over the seeds both have (interval None at one seed); None when no seed is shared."""
    va = dict(zip(a["seeds"], a["values"], strict=True))
    vb = dict(zip(b["seeds"], b["values"], strict=True))
    shared = sorted(set(va) & set(vb))
    if not shared:
        return None
    return stats([va[s] - vb[s] for s in shared], shared)


def _describe(name_a: str, name_b: str, metric: str, d: dict[str, Any]) -> str:
    if d["ci"] is None:
        return (
            f"{name_a} - {name_b} on {metric}: {d['mean']:+.3f} at one seed; no interval, so not evidence either way."
        )
    lo, hi = d["ci"]
    if lo > 0:
        word = "higher"
    elif hi < 0:
        word = "lower"
    else:
        word = "no difference detected"
    half = (hi - lo) / 2
    power = (
        f"half-width {half:.3f} <= {POWER_HALF_WIDTH}: a {POWER_HALF_WIDTH} difference would have been seen"
        if half <= POWER_HALF_WIDTH
        else f"half-width {half:.3f} > {POWER_HALF_WIDTH}: too wide to see a {POWER_HALF_WIDTH} difference"
    )
    return (
        f"{name_a} vs {name_b} on {metric}: **{word}** ({d['mean']:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}], "
        f"paired over {d['n']} seeds; {power})."
    )


def mode_balanced_arms(entries: Sequence[dict[str, Any]], dataset: str) -> list[str]:
    """Arms of `dataset` trained with an SFT auxiliary loss (spec sft_coef > 0), in table order."""
    return [
        e["arm"]
        for e in entries
        if e["dataset"] == dataset and e.get("spec") and float(e["spec"].get("sft_coef", 0) or 0) > 0
    ]


def verdicts(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The central claim in two parts, per dataset, from the numbers:

    1. does plain GRPO forget (grpo vs sft)?
    2. does the SFT auxiliary loss keep what it forgets (each mode-balanced arm vs grpo, and vs sft)?
    """
    out = []
    by = {(e["dataset"], e["arm"]): e for e in entries}
    for dataset in sorted({e["dataset"] for e in entries}):
        metric = "tail_rule_accuracy" if dataset == "rules" else "ndcg@10"
        pairs = [("grpo", "sft")]
        for arm in mode_balanced_arms(entries, dataset):
            pairs += [(arm, "grpo"), (arm, "sft")]
        if (dataset, "stepwise") in by:
            pairs.append(("stepwise", "grpo"))
        for a, b in pairs:
            ea, eb = by.get((dataset, a)), by.get((dataset, b))
            if not ea or not eb or metric not in ea or metric not in eb:
                continue
            d = paired_difference(ea[metric], eb[metric])
            if d is not None:
                out.append(f"{dataset}: " + _describe(a, b, metric, d))
    return out
