"""mu(t): the weight of the SFT auxiliary loss over training (Mode-Balanced Optimisation).

loss = L_RL + mu(t) * L_SFT. With progress p = step / max_steps in [0, 1], start mu_0 = `sft_coef` and end
mu_1 = `sft_coef_final`:

* constant: mu(t) = mu_0
* linear:   mu(t) = mu_0 + (mu_1 - mu_0) * p
* cosine:   mu(t) = mu_1 + (mu_0 - mu_1) * (1 + cos(pi * p)) / 2
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def sft_coef_at(step: int, max_steps: int, start: float, final: float, schedule: str = "constant") -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"sft_coef_schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return start
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    if schedule == "linear":
        return start + (final - start) * progress
    return final + (start - final) * (1.0 + math.cos(math.pi * progress)) / 2.0
