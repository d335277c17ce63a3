"""Timing: warm-up calls, then repeats, reported as their median (with every run kept for the reader).

A time budget bounds the repeats of slow configurations (torch bf16 emulated on a CPU without native bf16 takes
tens of seconds per batch): once the timed runs have used `budget_s`, no further repeat starts, and the figure
says how many runs it is the median of. At least one timed run is always made after the warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    runs_s: list[float]
    warmup: int
    result: Any = field(default=None, repr=False)  # what the last timed call returned (to check it, not time it)

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def per_s(self, items: int) -> float:
        """Items (pairs, requests) per second at the median time."""
        return items / self.median_s

    def to_dict(self, items: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "median_s": round(self.median_s, 6),
            "runs_s": [round(r, 6) for r in self.runs_s],
            "repeats": len(self.runs_s),
            "warmup": self.warmup,
        }
        if items is not None:
            out["items"] = items
            out["per_s"] = round(self.per_s(items), 4)
        return out


def measure(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3, budget_s: float | None = None) -> Timing:
    """Call `fn` `warmup` times untimed, then up to `repeats` times timed (fewer once `budget_s` is used up)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    runs: list[float] = []
    result = None
    while len(runs) < repeats:
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
        if budget_s is not None and sum(runs) >= budget_s:
            break
    return Timing(runs, warmup, result)


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default does."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
