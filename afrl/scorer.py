"""The torch reference scorer: grade probabilities from one batched forward pass, no decoding.

Export and service are checked against this. The grade logits are read at the last real (non-padding) position
of each prompt, which is exactly the position whose logits `generate` samples the first new token from. Only the
K+1 grade rows of the LM head are applied (a 49k-row head becomes 4 rows), and position ids are derived from
the attention mask, so left- and right-padded batches give the same numbers as one-by-one scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from afrl.contract import GradeResult, GradeScale, Prompt, PromptBuilder, result_from_logits
from afrl.padding import pad_rows
from afrl.prefix_lm import body, encoder_mask, grade_logits_from_hidden, is_prefix_lm

log = logging.getLogger(__name__)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (input_ids, attention_mask) tensors (`afrl.padding.pad_rows` as torch)."""
    ids, mask = pad_rows(sequences, pad_id, side)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as `generate` does, so padding never shifts them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for either padding side."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def grade_head(model: Any, grade_ids: Sequence[int]) -> torch.Tensor:
    """The LM-head rows of the grade tokens of a causal LM: the sliced head, (K+1) x hidden. (A prefix LM's head
    is not one matrix: use `afrl.prefix_lm.grade_logits_from_hidden`.)"""
    if is_prefix_lm(model):
        raise NotImplementedError("a prefix LM's grade head has a transform and a bias; it is not one matrix")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported by the sliced scorer")
    return head.weight[list(grade_ids)]


def last_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, hidden) final hidden state at the last real position: the vector the grade is read from.
    A prefix LM (`afrl.prefix_lm`) attends over the whole prompt; a causal LM left to right."""
    out = body(model)(
        input_ids=input_ids,
        attention_mask=encoder_mask(model, attention_mask),
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_real_index(attention_mask)]


def grade_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, grade_ids: Sequence[int]
) -> torch.Tensor:
    """(batch, K+1) grade logits at the last real position, in float32."""
    return grade_logits_from_hidden(model, last_hidden(model, input_ids, attention_mask), grade_ids).float()


def position_limit(model: Any) -> int | None:
    """How many positions the model embeds (`max_position_embeddings`), or None when its config does not say."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def attention_implementation(model: Any) -> str | None:
    """The attention kernel transformers runs the model with (`sdpa`, `eager`, ...), for /info and the benches."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


@dataclass
class TorchScorer:
    """Scores (query, document) pairs with a causal LM under the AFRL contract."""

    model: Any
    tokenizer: Any
    builder: PromptBuilder
    scale: GradeScale
    batch_size: int = 16
    padding_side: str = "right"

    def __post_init__(self) -> None:
        self.grade_ids = self.scale.token_ids(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self._check_positions()

    def _check_positions(self) -> None:
        """Refuse token budgets whose longest prompt exceeds the model's positions (a BERT prefix LM has 512):
        such a prompt would fail deep inside the model, on the first long document of some request."""
        limit = position_limit(self.model)
        b = self.builder
        longest = b.max_prompt_tokens()
        if limit is not None and longest > limit:
            raise ValueError(
                f"the longest prompt of this contract is {longest} tokens (max_query_tokens {b.max_query_tokens} + "
                f"max_document_tokens {b.max_document_tokens} + the template) but the model has {limit} positions: "
                "lower the token budgets in its afrl.json / training config"
            )

    def logits_for_prompts(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(n, K+1) grade logits; batches are formed in length order to waste little padding."""
        return self._batched(prompts, partial(grade_logits, self.model, grade_ids=self.grade_ids), len(self.grade_ids))

    def hidden_for_prompts(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(n, hidden) last-position hidden states in float32 (for probes: what the grade head sees)."""
        width = self.model.get_output_embeddings().weight.shape[1]
        return self._batched(prompts, partial(last_hidden, self.model), width)

    @torch.inference_mode()
    def _batched(self, prompts: Sequence[Prompt], fn: Any, width: int) -> torch.Tensor:
        """(n, width) float32 rows of `fn(input_ids, attention_mask)` over length-sorted batches, in prompt order."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
        out = torch.empty((len(prompts), width), dtype=torch.float32)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = pad_batch([prompts[i].input_ids for i in idx], self.pad_id, self.padding_side)
            out[idx] = fn(ids.to(device), mask.to(device)).cpu()
        return out

    def score(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[GradeResult]:
        if not pairs:
            return []
        prompts = self.builder.build_many(pairs, instruction)
        logits = self.logits_for_prompts(prompts)
        return [result_from_logits(row.tolist()) for row in logits]

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[tuple[int, float]]:
        """CrossEncoder-style: (index, score) of the documents, best first."""
        results = self.score([(query, d) for d in documents])
        ranked = sorted(enumerate(r.score for r in results), key=lambda x: -x[1])
        return ranked[:top_k] if top_k is not None else ranked


def fitted_default_builder(model: Any, tokenizer: Any) -> PromptBuilder:
    """The default contract's prompt builder for a plain base (no manifest), its document budget lowered when the
    longest prompt would not fit the model's positions (a BERT prefix-LM base: 512 positions, and the default
    74-token template + 64 + 384 is 522). A trained model's manifest budgets are never changed, only checked."""
    builder = PromptBuilder(tokenizer)
    limit = position_limit(model)
    if limit is None:
        return builder
    over = builder.max_prompt_tokens() - limit
    if over <= 0:
        return builder
    fitted = builder.max_document_tokens - over
    if fitted < 1:
        return builder  # nothing sensible fits; TorchScorer refuses it with the figures
    log.warning(
        "the default document budget (%d tokens) is lowered to %d to fit the model's %d positions",
        builder.max_document_tokens,
        fitted,
        limit,
    )
    return PromptBuilder(tokenizer, max_query_tokens=builder.max_query_tokens, max_document_tokens=fitted)


def load_scorer(spec: str, dtype: Any = None, batch_size: int = 16) -> TorchScorer:
    """A TorchScorer for a model spec, with the contract settings from its manifest when it has one."""
    from afrl.manifest import MANIFEST_NAME, load_verified
    from afrl.models import load_model

    model, tokenizer, path = load_model(spec, dtype=dtype)
    # A folder without a manifest is a plain base model (default contract); one with a manifest must verify.
    if (path / MANIFEST_NAME).is_file():
        manifest = load_verified(path)
        builder = PromptBuilder(
            tokenizer,
            instruction=manifest.instruction,
            max_query_tokens=manifest.max_query_tokens,
            max_document_tokens=manifest.max_document_tokens,
        )
        scale = manifest.scale
    else:
        builder, scale = fitted_default_builder(model, tokenizer), GradeScale()
    return TorchScorer(model, tokenizer, builder, scale, batch_size=batch_size)
