"""Prefix-LM students: an encoder's weights as an AFRL model, bidirectional over the prompt, causal after it.

Why it exists: on this project's CPU budget the embedded MiniLM teacher's own encoder learns to rank far faster
than any SmolLM2 cut, *when it attends over the whole prompt* (DL20 dev nDCG@10 after 15 minutes: bidirectional
0.382, causal 0.248, SmolLM2 0.21; training/README.md). A prefix LM keeps the AFRL contract with that attention:

- scoring: one forward pass over the prompt with bidirectional attention (every prompt token sees every other),
  and the grade logits at the last prompt position, exactly where the first generated token is read;
- explaining: each new token attends to the whole prompt and to the tokens generated before it (the prompt's
  keys and values are computed once, bidirectionally, and cached), so the explanation is written left to right
  after the grade, as with a causal LM;
- training the explanation: the same mask (`prefix_lm_mask`), so teacher forcing sees what generation sees.

transformers' `BertLMHeadModel` with `is_decoder=True` is such a model once it is given a 3-D attention mask: its
`get_extended_attention_mask` uses a (batch, query, key) mask as it is and adds no causal triangle, while a
cached one-token step attends to everything before it. This module is the one place that knows the architecture
differences (the body is `model.bert`, the LM head has a transform and a bias); `afrl.scorer` asks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PREFIX_LM_MODEL_TYPES = frozenset({"bert"})

# The chat template a prefix-LM student's tokenizer carries (BERT's has none, and `afrl.contract.PromptBuilder`
# renders every prompt through the tokenizer's own template): [CLS] system [SEP] user [SEP]; the grade is read at
# the final [SEP] and generation continues from there.
PREFIX_LM_CHAT_TEMPLATE = (
    "{{ '[CLS]' }}{% for message in messages %}{{ ' ' + message['content'] + ' [SEP]' }}{% endfor %}"
)


def is_prefix_lm(model: Any) -> bool:
    """Whether `model` (a transformers model, PEFT-wrapped or not) is read as a prefix LM."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in PREFIX_LM_MODEL_TYPES


def body(model: Any) -> Any:
    """The transformer without its LM head: `model.bert` for a prefix LM, `model.model` for a causal LM."""
    return model.bert if is_prefix_lm(model) else model.model


def prompt_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, L, L) bidirectional mask: every position sees every real (non-padding) position."""
    keys = attention_mask.to(torch.long)
    return keys[:, None, :].expand(-1, keys.shape[1], -1).contiguous()


def prefix_lm_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """(batch, L, L) mask of a right-padded prompt + completion: query i sees key j when j is a real token and
    either j is in the prompt (j < prompt_length) or j <= i (the completion is causal); prompt positions
    therefore never see the completion."""
    n = attention_mask.shape[1]
    pos = torch.arange(n, device=attention_mask.device)
    in_prompt = pos[None, :] < prompt_lengths.to(attention_mask.device)[:, None]  # (batch, key)
    causal = pos[None, :] <= pos[:, None]  # (query, key)
    allowed = (in_prompt[:, None, :] | causal[None, :, :]) & attention_mask.bool()[:, None, :]
    return allowed.to(torch.long)


def encoder_mask(model: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mask to hand `body(model)` for a prompt-only batch: 3-D bidirectional for a prefix LM, else as is."""
    return prompt_mask(attention_mask) if is_prefix_lm(model) else attention_mask


def grade_logits_from_hidden(model: Any, hidden: torch.Tensor, grade_ids: Sequence[int]) -> torch.Tensor:
    """(batch, K+1) logits of the grade tokens from final hidden states (batch, hidden): only those K+1 rows of
    the LM head are applied. A prefix LM's head (BERT) first applies its transform (dense, GELU, LayerNorm) and
    adds its bias; a causal LM's head is a plain (tied) projection."""
    ids = list(grade_ids)
    if is_prefix_lm(model):
        predictions = model.cls.predictions
        decoder = predictions.decoder
        return predictions.transform(hidden) @ decoder.weight[ids].T + decoder.bias[ids]
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("causal LM heads with a bias are not supported by the sliced scorer")
    return hidden @ head.weight[ids].T


def training_mask(model: Any, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """The mask to hand `body(model)` for a right-padded prompt + completion batch in training: `prefix_lm_mask`
    for a prefix LM (teacher forcing then sees what generation sees), the plain padding mask for a causal LM."""
    return prefix_lm_mask(attention_mask, prompt_lengths) if is_prefix_lm(model) else attention_mask


def vocab_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits of final hidden states (the explanation NLL): BERT's head (transform, tied decoder,
    bias) for a prefix LM, the output embeddings for a causal LM."""
    head = model.cls if is_prefix_lm(model) else model.get_output_embeddings()
    return head(hidden)


def prompt_pass(model: Any, input_ids: torch.Tensor, use_cache: bool = True) -> tuple[torch.Tensor, Any]:
    """(next-token logits (batch, vocab) at the last position, KV cache) of an unpadded prompt batch: the pass
    that gives the score before anything is decoded. A prefix LM gets its bidirectional mask; a causal LM keeps
    only the last position's logits."""
    if is_prefix_lm(model):
        out = model(input_ids=input_ids, attention_mask=prompt_mask(torch.ones_like(input_ids)), use_cache=use_cache)
    else:
        out = model(input_ids=input_ids, use_cache=use_cache, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


def step_pass(model: Any, token_ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
    """(next-token logits, cache) after feeding one new token per row over `past`: it attends to the whole prompt
    and every earlier new token, for both kinds of model."""
    extra = {} if is_prefix_lm(model) else {"logits_to_keep": 1}
    out = model(input_ids=token_ids, past_key_values=past, use_cache=True, **extra)
    return out.logits[:, -1], out.past_key_values


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids generation stops on: the tokenizer's end token and the model's generation config's, and for
    a prefix LM also `[SEP]`, which closes every turn of its chat template."""
    ids = {tokenizer.eos_token_id}
    if is_prefix_lm(model):
        ids.add(getattr(tokenizer, "sep_token_id", None))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {int(i) for i in ids if i is not None}


def greedy_continuation(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_ids: set[int],
    grade_ids: Sequence[int] | None = None,
    constraint: Any = None,
) -> list[int]:
    """Greedy token ids after a one-row prompt, stopping at an end token (not included) or the length limit. With
    `grade_ids`, the first token is the argmax grade, as the service's `/explain` writes it (a student distilled
    on grade logits alone never learned the rest of the vocabulary's scores at that position). A `constraint`
    (`afrl.explanation_constraint.ExplanationConstraint`) keeps the explanation to the contract's shape; the loop
    is `afrl.explanation_constraint.decode_explanation`, the one the service's backends use."""
    from afrl.explanation_constraint import decode_explanation

    logits, past = prompt_pass(model, input_ids)
    ids = list(grade_ids) if grade_ids is not None else None
    first = ids[int(logits[0][ids].argmax())] if ids is not None else int(logits[0].argmax())
    if first in eos_ids:
        return []

    def step(token: int, cache: Any) -> tuple[torch.Tensor, Any]:
        out, cache = step_pass(model, torch.tensor([[token]], device=input_ids.device), cache)
        return out[0], cache

    return list(decode_explanation(first, step, past, max_new_tokens, eos_ids, constraint))


def build_prefix_lm_base(encoder_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a prefix-LM base folder from a BERT encoder folder (the embedded MiniLM teacher, or a user's):
    `BertLMHeadModel` with `is_decoder=True` (its LM-head transform is new, its decoder tied to the word
    embeddings), the tokenizer with `PREFIX_LM_CHAT_TEMPLATE`, a newline token (BERT's normaliser drops `\\n`,
    which the explanation format needs; an added token that skips normalisation keeps it), and `[SEP]`, which
    closes every turn of the template, as the end token that generation stops on."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, BertLMHeadModel

    src, out = Path(encoder_dir), Path(out_dir)
    tok = AutoTokenizer.from_pretrained(src)
    if tok.sep_token is None:
        raise ValueError(f"{src}: the tokenizer has no [SEP] token; a prefix-LM base needs a BERT-style encoder")
    tok.add_tokens([AddedToken("\n", normalized=False, special=False)])
    tok.chat_template = PREFIX_LM_CHAT_TEMPLATE
    tok.eos_token = tok.sep_token
    model = BertLMHeadModel.from_pretrained(src, is_decoder=True)
    model.resize_token_embeddings(len(tok))
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.sep_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
