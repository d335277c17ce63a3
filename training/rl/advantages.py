"""Group-normalised advantages, one per step (Stepwise-GRPO), spread over each step's tokens.

For a group of G completions of the same prompt and step s with rewards r_{1..G,s}:
    A_{i,s} = (r_{i,s} - mean_j r_{j,s}) / (std_j r_{j,s} + eps)       (std unbiased, as TRL's `nanstd`)
and token t of completion i gets A_{i, step(i, t)}. With one step this is TRL's per-completion advantage.
"""

from __future__ import annotations

import torch

EPS = 1e-4  # TRL's


def group_step_advantages(rewards: torch.Tensor, num_generations: int, scale: bool = True) -> torch.Tensor:
    """(N, S) rewards, rows grouped as G consecutive completions per prompt -> (N, S) advantages."""
    n, s = rewards.shape
    if n % num_generations:
        raise ValueError(f"{n} completions do not form groups of {num_generations}")
    grouped = rewards.view(-1, num_generations, s)
    mean = grouped.mean(dim=1, keepdim=True)
    adv = grouped - mean
    if scale:
        std = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean)
        adv = adv / (std + EPS)
    return adv.view(n, s)


def token_advantages(step_adv: torch.Tensor, step_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T): each completion token's step advantage, 0 on padding."""
    return step_adv.gather(1, step_ids.clamp(max=step_adv.shape[1] - 1)) * mask.to(step_adv.dtype)
