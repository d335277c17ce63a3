"""The loss of distillation from a calibrated pool: grade distribution, ranking within each query, explanation.

    L = alpha * KL(q || p)  +  listwise_weight * mean_g KL(softmax(t_g / tau) || softmax(s_g / tau))
        + (1 - alpha) * NLL(explanation tokens)

- q is the calibrated teacher's grade distribution of a pair (mixed with the human grade where there is one) and p
  the student's softmax over its K+1 grade logits at the last prompt position (temperature 1: the target is
  already a calibrated distribution, not logits to soften);
- g runs over the query groups of the batch (consecutive `group_size` rows of one query); t_g are the teacher's
  ranking scores (expected grade / K of q, in [0, 1]) and s_g the student's expected grade / K, both divided by
  tau. Expected grades in [0, 1] give a listwise term at temperature 1 only ~0.44 nats of range even for a perfect
  student; at tau = 0.1 the range is ~10x that, so the ranking term is not drowned by the pointwise one;
- the NLL is over the explanation tokens of the rows that carry one (a share of the pool, `explanation_share`),
  so `/explain` keeps writing well-formed explanations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from training.distill_loss import student_forward


def expected_grade(logits: torch.Tensor) -> torch.Tensor:
    """sum_k k * softmax(logits)_k / K: the AFRL ranking score (afrl.contract), differentiable."""
    k = logits.shape[-1] - 1
    grades = torch.arange(k + 1, device=logits.device, dtype=logits.dtype)
    return (logits.softmax(-1) * grades).sum(-1) / k


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, group_size: int, tau: float) -> torch.Tensor:
    """Mean over groups of KL(softmax(teacher / tau) || softmax(student / tau)); (batch,) scores in [0, 1]."""
    if student.shape[0] % group_size:
        raise ValueError(f"batch of {student.shape[0]} rows is not whole groups of {group_size}")
    s = (student / tau).view(-1, group_size)
    t = (teacher.to(student.device) / tau).view(-1, group_size)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


def pool_distill_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    grade_ids: Sequence[int],
    alpha: float,
    listwise_weight: float,
    tau: float,
    group_size: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parts: kl, list, nll, spread) for a right-padded batch of whole query groups."""
    logits, nll = student_forward(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["grade_pos"], grade_ids, alpha < 1
    )
    kl, lst, spread = grade_and_list_terms(
        logits, batch["teacher_probs"], batch["teacher_score"], listwise_weight > 0, tau, group_size
    )
    loss = alpha * kl + listwise_weight * lst + (1.0 - alpha) * nll
    return loss, {"kl": kl.detach(), "list": lst.detach(), "nll": nll.detach(), "spread": spread}


def grade_and_list_terms(
    logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_score: torch.Tensor,
    listwise: bool,
    tau: float,
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grade KL, listwise KL (0 when off), within-query spread) of a batch of whole groups' grade logits."""
    target = teacher_probs.to(logits.device)
    kl = F.kl_div(F.log_softmax(logits, -1), target.clamp_min(1e-8).log(), log_target=True, reduction="batchmean")
    score = expected_grade(logits)
    lst = listwise_kl(score, teacher_score, group_size, tau) if listwise else torch.zeros(())
    # within-query spread of the student's scores: a student that ignores the document keeps this at 0
    spread = score.detach().view(-1, group_size).std(-1).mean()
    return kl, lst, spread
