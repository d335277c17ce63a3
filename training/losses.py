"""Losses shared by the training stages, each with its formula.

`completion_nll`: L_SFT = sum_t w_t * (-log p(y_t | y_<t, prompt)) / sum_t w_t over the completion tokens, where
w_t = `grade_weight` for the first completion token (the grade) and 1 for the others. With w = 1 it is the plain
mean NLL. Why the weight: an AFRL completion is ~45 tokens and only the first one is what the scorer reads, so
unweighted SFT spends ~2 % of its loss on the grade (the first SmolLM2 run learned the explanation format and
collapsed to the majority grade, training/README.md).
The LM head is applied only at completion positions: the prompt is most of every sequence and a 49k-row head
over it is about a quarter of the forward cost on CPU, for logits the loss never reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from afrl.scorer import position_ids_from_mask


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, lm_head) of a causal LM, through a PEFT wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)  # DDP / accelerate wrappers
    return inner.model, inner.get_output_embeddings()


def completion_nll(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    grade_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean NLL over label positions != -100, token accuracy), the head applied only where needed."""
    decoder, head = causal_lm_parts(model)
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = hidden.last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = head(hidden[keep]).float()
    gold = targets[keep]
    nll = F.cross_entropy(logits, gold, reduction="none")
    if grade_weight == 1.0:
        loss = nll.mean()
    else:
        # the first kept position of each row is its grade token
        first = keep & (keep.long().cumsum(-1) == 1)
        weights = torch.where(first[keep], grade_weight, 1.0).to(nll.dtype)
        loss = (weights * nll).sum() / weights.sum()
    accuracy = (logits.argmax(-1) == gold).float().mean().detach()
    return loss, accuracy
