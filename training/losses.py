"""Losses shared by the training stages, each with its formula.

`completion_nll`: L_SFT = - sum_{t in completion} log p(y_t | y_<t, prompt) / (number of completion tokens).
The LM head is applied only at completion positions: the prompt is most of every sequence and a 49k-row head
over it is about a quarter of the forward cost on CPU, for logits the loss never reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, lm_head) of a causal LM, through a PEFT wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)  # DDP / accelerate wrappers
    return inner.model, inner.get_output_embeddings()


def completion_nll(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL over label positions != -100, token accuracy) with the head applied only where needed."""
    decoder, head = causal_lm_parts(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = head(hidden[keep]).float()
    gold = targets[keep]
    loss = F.cross_entropy(logits, gold)
    accuracy = (logits.argmax(-1) == gold).float().mean().detach()
    return loss, accuracy
