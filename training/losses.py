"""Losses shared by the training stages, each with its formula.

`completion_nll`: L_SFT = sum_t w_t * (-log p(y_t | y_<t, prompt)) / sum_t w_t over the completion tokens, where
w_t = `grade_weight` for the first completion token (the grade) and 1 for the others. With w = 1 it is the plain
mean NLL. Why the weight: an AFRL completion is ~45 tokens and only the first one is what the scorer reads, so
unweighted SFT spends ~2 % of its loss on the grade (the first SmolLM2 run learned the explanation format and
collapsed to the majority grade, training/README.md).
The LM head is applied only at completion positions: the prompt is most of every sequence and a 49k-row head
over it is about a quarter of the forward cost on CPU, for logits the loss never reads. A prefix LM
(`afrl.prefix_lm`) is trained under its own mask (bidirectional over the prompt, which ends where the first label
is, causal over the completion) and its own head (BERT's transform and bias), so SFT and RL train it as it scores.

`listwise_grade_loss` (ListNet): for a batch of documents of one query, L_rank = -sum_i softmax(g)_i *
log softmax(s)_i, where g_i is the gold grade and s_i = sum_k k * p_i(k) the expected grade the scorer ranks by.
Why: pointwise SFT on ~100 queries learned the grade format and per-query priors, not which document of a pool
is better (the balanced model ranks at chance, training/README.md); this term is exactly the within-query
ordering that nDCG measures, read from the same forward pass (no extra compute).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from afrl.prefix_lm import body, training_mask, vocab_logits
from afrl.scorer import position_ids_from_mask


def unwrap_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper and DDP / accelerate wrappers, if there are any."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "module", inner)


def completion_nll(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    grade_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean NLL over label positions != -100, token accuracy), the head applied only where needed."""
    loss, accuracy, _ = completion_nll_and_grade_logits(model, input_ids, attention_mask, labels, grade_weight)
    return loss, accuracy


def completion_token_nll(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL of every label token, its full-vocabulary logits, the (batch, L-1) mask `keep` of label positions).

    The first two are flat over the kept positions in row-major order: position t of `keep` predicts
    `labels[:, t + 1]`. SFT averages them; RL weighs each sampled token's log-probability by its advantage."""
    inner = unwrap_model(model)
    prompt_lengths = (labels != -100).long().argmax(-1)  # the first label is the grade, right after the prompt
    hidden = body(inner)(
        input_ids=input_ids,
        attention_mask=training_mask(inner, attention_mask, prompt_lengths),
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = hidden.last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = vocab_logits(inner, hidden[keep]).float()
    return F.cross_entropy(logits, targets[keep], reduction="none"), logits, keep


def completion_nll_and_grade_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    grade_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`completion_nll` plus the full-vocabulary logits at each row's grade position (batch x vocab), so that a
    ranking term can be added without a second forward pass."""
    nll, logits, keep = completion_token_nll(model, input_ids, attention_mask, labels)
    gold = labels[:, 1:][keep]
    # the first kept position of each row is its grade token
    first = (keep & (keep.long().cumsum(-1) == 1))[keep]
    if grade_weight == 1.0:
        loss = nll.mean()
    else:
        weights = torch.where(first, grade_weight, 1.0).to(nll.dtype)
        loss = (weights * nll).sum() / weights.sum()
    accuracy = (logits.argmax(-1) == gold).float().mean().detach()
    return loss, accuracy, logits[first]


def listwise_grade_loss(grade_logits: torch.Tensor, gold_grades: torch.Tensor) -> torch.Tensor:
    """ListNet over one query's documents: grade_logits (n, K+1), gold_grades (n,) integers in 0..K."""
    if grade_logits.shape[0] < 2:
        raise ValueError("the listwise loss needs at least two documents of the same query")
    grades = torch.arange(grade_logits.shape[1], dtype=torch.float32, device=grade_logits.device)
    expected = grade_logits.float().softmax(-1) @ grades
    target = gold_grades.float().softmax(-1)
    return -(target * expected.log_softmax(-1)).sum()
