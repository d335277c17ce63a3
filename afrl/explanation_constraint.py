"""Constrained explanation decoding: the Evidence is a verbatim span of the passage and the Verdict restates the
grade, by construction.

Why: the AFRL explanation's Evidence must quote the passage (`afrl.contract.parse_completion` checks it), and a
small student learns the explanation's fixed format long before it learns to copy (the prefix-LM student's NLL
flattens at ~3 nats/token with the field names learned and the copied words not; training/README.md). Grammar-
constrained decoding is the standard remedy (vLLM's guided decoding and outlines do it for JSON). Here only two
places are constrained, so the rest (Intent, Reasoning, where the quote starts and stops) stays the model's own:

- until the text so far ends with `Evidence: "` (any case, any spacing), tokens are free;
- inside the quote, the next token must continue a span of the passage's own token ids (the prompt's document
  tokens), or close the quote once at least one token is quoted; when no span can continue, or after
  `max_quote_tokens`, the quote is closed, and the closing quote is followed by the newline that ends the field;
- when the text ends with `Verdict:`, the next token is the grade the explanation started with (the AFRL
  contract: the Verdict restates the first token), and the explanation ends there.

So `consistency` measured under this decoding (afrl eval) is partly guaranteed: it reports the model's format
(fields present, in order) and the constraint's quote and verdict; `consistency_free` is the model alone.
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
_VERDICT = re.compile(r"verdict\s*:\s*$", re.IGNORECASE)


class ExplanationConstraint:
    def __init__(
        self,
        tokenizer: Any,
        document_ids: Sequence[int],
        close_id: int,
        max_quote_tokens: int = 32,
        newline_id: int | None = None,
        end_id: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.close_id = close_id
        self.newline_id = newline_id
        self.end_id = end_id
        self.doc = list(document_ids)
        self.max_quote_tokens = max_quote_tokens
        self.tokens: list[int] = []
        self.state = "before"  # "before" the quote opens, "inside" it, "after" it closed, "done" after the verdict
        self.matches: list[int] = []  # passage positions of the last quoted token (every span still possible)
        self.quoted = 0
        self._decoded: tuple[int, str] = (0, "")  # (len(tokens), their text): one decode per emitted token

    def _text(self) -> str:
        """The text of the tokens so far, decoded once per new token (allowed and advance both read it)."""
        if self._decoded[0] != len(self.tokens):
            self._decoded = (len(self.tokens), self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        return self._decoded[1]

    @classmethod
    def for_prompt(cls, tokenizer: Any, prompt: Prompt, max_quote_tokens: int = 32) -> ExplanationConstraint | None:
        """The constraint for one prompt's passage (its document token ids), or None when `"` is not one token."""
        ids = tokenizer.encode('"', add_special_tokens=False)
        if len(ids) != 1:
            return None
        newline = tokenizer.encode("\n", add_special_tokens=False)
        start = prompt.query_prefix_len
        return cls(
            tokenizer,
            prompt.input_ids[start : start + prompt.document_tokens],
            ids[0],
            max_quote_tokens,
            newline_id=newline[0] if len(newline) == 1 else None,
            end_id=tokenizer.eos_token_id,
        )

    def allowed(self) -> list[int] | None:
        """Token ids the next token may be, or None when it is free."""
        if self.state == "done":
            return [self.end_id] if self.end_id is not None else None
        text = self._text() if self.state != "inside" else ""
        if self.state == "before" and _OPENS.search(text):
            self.state = "inside"
        if self.state != "inside":
            if self.tokens and _VERDICT.search(text):
                return [self.tokens[0]]  # the grade the explanation started with
            if self.state == "after" and self.tokens[-1] == self.close_id and self.newline_id is not None:
                return [self.newline_id]
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
        if self.state != "inside" and self.tokens and _VERDICT.search(self._text()):
            self.state = "done"
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
