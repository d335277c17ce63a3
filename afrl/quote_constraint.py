"""Quote-constrained decoding: the Evidence of an explanation is a verbatim span of the passage, by construction.

Why: the AFRL explanation's Evidence must quote the passage (`afrl.contract.parse_completion` checks it), and a
small student learns the explanation's fixed format long before it learns to copy (the prefix-LM student's NLL
flattens at ~3 nats/token with the field names learned and the copied words not; training/README.md). Grammar-
constrained decoding is the standard remedy (vLLM's guided decoding and outlines do it for JSON); here only the
quote is constrained, so everything else the model writes (Intent, Reasoning, Verdict, and where the quote starts
and stops) stays its own choice:

- until the text so far ends with `Evidence: "` (any case, any spacing), tokens are free;
- inside the quote, the next token must continue a span of the passage's own token ids (the prompt's document
  tokens), or close the quote once at least one token is quoted; when no span can continue, or after
  `max_quote_tokens`, the quote is closed;
- after the closing quote, tokens are free again.

One object per explanation; `pick(logits)` chooses the greedy token under the constraint and records it. Used by
`afrl.prefix_lm.greedy_continuation` (afrl eval's explanation sample) and the service's torch backend, so both
decode alike. A tokenizer without a one-token `"` gets no constraint (`for_prompt` returns None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from afrl.contract import Prompt

_OPENS = re.compile(r'evidence\s*:\s*"\s*$', re.IGNORECASE)


class QuoteConstraint:
    def __init__(self, tokenizer: Any, document_ids: Sequence[int], close_id: int, max_quote_tokens: int = 32):
        self.tokenizer = tokenizer
        self.close_id = close_id
        self.doc = list(document_ids)
        self.max_quote_tokens = max_quote_tokens
        self.tokens: list[int] = []
        self.state = "before"  # "before" the quote opens, "inside" it, "after" it closed
        self.matches: list[int] = []  # passage positions of the last quoted token (every span still possible)
        self.quoted = 0

    @classmethod
    def for_prompt(cls, tokenizer: Any, prompt: Prompt, max_quote_tokens: int = 32) -> QuoteConstraint | None:
        """The constraint for one prompt's passage (its document token ids), or None when `"` is not one token."""
        ids = tokenizer.encode('"', add_special_tokens=False)
        if len(ids) != 1:
            return None
        start = prompt.query_prefix_len
        return cls(tokenizer, prompt.input_ids[start : start + prompt.document_tokens], ids[0], max_quote_tokens)

    def allowed(self) -> list[int] | None:
        """Token ids the next token may be, or None when it is free."""
        if self.state == "before" and _OPENS.search(self.tokenizer.decode(self.tokens, skip_special_tokens=True)):
            self.state = "inside"
        if self.state != "inside":
            return None
        if self.quoted == 0:
            starts = {t for t in self.doc if t != self.close_id}
            return sorted(starts) if starts else [self.close_id]
        following = {self.doc[i + 1] for i in self.matches if i + 1 < len(self.doc)} - {self.close_id}
        if not following or self.quoted >= self.max_quote_tokens:
            return [self.close_id]
        return sorted(following | {self.close_id})

    def advance(self, token: int) -> None:
        """Record the token that was emitted (picked here or forced by the caller, e.g. the grade)."""
        if self.state == "inside":
            if token == self.close_id:
                self.state = "after"
            elif self.quoted == 0:
                self.matches = [i for i, t in enumerate(self.doc) if t == token]
                self.quoted = 1
            else:
                self.matches = [i + 1 for i in self.matches if i + 1 < len(self.doc) and self.doc[i + 1] == token]
                self.quoted += 1
        self.tokens.append(token)

    def pick(self, logits: torch.Tensor) -> int:
        """The greedy token of one row of next-token logits (vocab,) under the constraint, recorded."""
        allowed = self.allowed()
        token = int(logits.argmax()) if allowed is None else allowed[int(logits[allowed].argmax())]
        self.advance(token)
        return token
