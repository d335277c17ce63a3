"""The distillation loss: soft grade targets at the first token plus the teacher's explanation tokens.

    L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) )  +  (1 - alpha) * NLL(teacher-written explanation)

where t and s are the teacher's and the student's K+1 grade logits at the last prompt position (the position the
grade token is read from, `afrl.scorer.grade_logits`), T is the temperature (T^2 keeps the gradient scale of the
soft term independent of T, as in Hinton et al. 2015), and the NLL is the mean over the explanation tokens the
teacher wrote (its greedy continuation after its own top grade, and the end-of-turn token when it finished). The
grade token itself is left out of the NLL: the KL term already carries the teacher's whole grade distribution,
and a hard label on the teacher's argmax would pull the student back towards one-hot grades.

One decoder pass gives both terms; the LM head is applied only to the K+1 grade rows at the grade position and to
the explanation positions (as `training.losses.completion_nll` does for SFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from afrl.prefix_lm import body, grade_logits_from_hidden, training_mask, vocab_logits
from afrl.scorer import position_ids_from_mask
from training.losses import unwrap_model


def grade_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch; (batch, K+1) logits in."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * t * t


def student_forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    grade_pos: torch.Tensor,
    grade_ids: Sequence[int],
    with_nll: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student grade logits (batch, K+1) at `grade_pos`, mean NLL over the label positions != -100).

    One pass of the body; the LM head is applied only to the grade rows at the grade position and to the labelled
    positions. The NLL is 0 when `with_nll` is off or no row has a label. A prefix LM (`afrl.prefix_lm`) attends
    bidirectionally over each prompt (up to `grade_pos`) and causally over the completion, as it generates.
    """
    inner = unwrap_model(model)
    out = body(inner)(
        input_ids=input_ids,
        attention_mask=training_mask(inner, attention_mask, grade_pos + 1),
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    student_logits = grade_logits_from_hidden(inner, hidden[rows, grade_pos], grade_ids).float()
    targets = labels[:, 1:]
    keep = targets != -100
    if with_nll and bool(keep.any()):
        logits = vocab_logits(inner, hidden[:, :-1][keep]).float()
        nll = F.cross_entropy(logits, targets[keep])
    else:  # grade-only distillation, or a batch whose explanations are all empty
        nll = torch.zeros((), device=hidden.device)
    return student_logits, nll


def distill_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    grade_pos: torch.Tensor,
    teacher_logits: torch.Tensor,
    grade_ids: Sequence[int],
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parts) for a right-padded batch; `labels` is -100 except on the explanation tokens.

    `grade_pos[b]` is the index of the last prompt token of row b; parts: kl, nll, student grade logits.
    """
    student_logits, nll = student_forward(
        model, input_ids, attention_mask, labels, grade_pos, grade_ids, with_nll=alpha < 1.0
    )
    kl = grade_kl(student_logits, teacher_logits.to(student_logits.device), temperature)
    loss = alpha * kl + (1.0 - alpha) * nll
    return loss, {"kl": kl.detach(), "nll": nll.detach(), "student_logits": student_logits.detach()}
