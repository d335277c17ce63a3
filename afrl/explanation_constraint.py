"""Constrained explanation decoding: the explanation has the contract's shape by construction, and the model
writes only the words inside it.

Why: the AFRL explanation is `<grade>\\nIntent: ...\\nEvidence: "<a quote of the passage>"\\nReasoning: ...\\nVerdict:
<grade>` (`afrl.contract.parse_completion` checks it), and a small student learns the format's words long before it
keeps their order or learns to copy (the prefix-LM student's NLL flattens at ~3 nats/token; unconstrained it wrote
0 of 20 well-formed explanations, and with only the quote and the Verdict constrained 12 of 20, the rest writing the
quote inside Intent or Reasoning twice; training/README.md). Grammar-constrained decoding is the standard remedy
(vLLM's guided decoding and outlines do it for JSON and regexes). The grammar here is the contract's, step by step:

- the field labels (`Intent:`, `Evidence: "`, `Reasoning:`, `Verdict:`) are written by the constraint, each at the
  start of a line, in the contract's order, once;
- Intent and Reasoning are the model's free text: any token except an end or special token, and no blank token
  while the field is still empty, and no 3-gram twice (transformers' `no_repeat_ngram_size`); the model's line
  break ends the field (a token with text after its line break is refused, so
  the next label always starts its own line), or the field's token cap does;
- inside the Evidence quote every token continues a span of the passage's own token ids (the prompt's document
  tokens); the model may close the quote after `min_quote_tokens` (4: a one-word quote such as "the" is no
  evidence); it is closed for it when no span can continue or at `max_quote_tokens`;
- the Verdict is the grade the explanation started with (the contract: the Verdict restates the first token),
  then the end token.

With a token `budget` (the caller's max_new_tokens) the free fields and the quote end early enough that the rest
of the explanation still fits, so a long-winded model cannot run out of tokens before its Verdict.

What this means for the measured rate: under this decoding `consistency` (afrl eval, "as served") is guaranteed
whenever the budget fits the skeleton; it tells that /explain always returns a parseable explanation, not that the
model writes good ones. `consistency_free` (the model alone, no constraint) is the model's own rate, and the text
inside the fields is the model's: read it before trusting it.

One object per explanation: `advance(token)` records a token the caller chose (the first-token grade), `pick(logits)`
chooses the greedy token under the constraint and records it. `decode_explanation` is the one greedy loop over it,
used by `afrl.prefix_lm.greedy_continuation` (afrl eval's sample), the torch backend's `/explain` and the ONNX
generator, so all decode alike. A tokenizer without a one-token `"` or newline gets no constraint (`for_prompt`
returns None).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from afrl.contract import Prompt

FIELD_TOKENS = {"Intent": 32, "Reasoning": 48}  # caps on the model's free text per field
NO_REPEAT_NGRAM = 3  # no 3-gram twice within a free field

# The explanation's steps after the first-token grade: ("label", text) is written by the constraint at a line
# start, ("free", field) is the model's text, ("quote",) the Evidence span, ("grade",) the Verdict, ("end",) the end.
_PLAN: tuple[tuple[str, str], ...] = (
    ("label", "Intent:"),
    ("free", "Intent"),
    ("label", 'Evidence: "'),
    ("quote", ""),
    ("label", "Reasoning:"),
    ("free", "Reasoning"),
    ("label", "Verdict:"),
    ("grade", ""),
    ("end", ""),
)


@lru_cache(maxsize=8)
def vocab_classes(tokenizer: Any) -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """Over the tokenizer's whole vocabulary, decoded once per tokenizer: (tokens that end a line cleanly, only
    whitespace after their last line break; tokens with a line break and then text; tokens a free field may not start
    with: whitespace only, or special)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    clean: set[int] = set()
    dirty: set[int] = set()
    blank: set[int] = set(getattr(tokenizer, "all_special_ids", ()))
    for i, text in enumerate(texts):
        lines = (text + "x").splitlines()  # str.splitlines' breaks (also \r, \x0c, \u2028...), as parse_completion's
        if len(lines) > 1:
            (clean if not lines[-1][:-1].strip() else dirty).add(i)
        if not text.strip():
            blank.add(i)
    return frozenset(clean), frozenset(dirty), frozenset(blank)


class ExplanationConstraint:
    def __init__(
        self,
        tokenizer: Any,
        document_ids: Sequence[int],
        close_id: int,
        newline_id: int,
        end_id: int | None = None,
        max_quote_tokens: int = 32,
        budget: int | None = None,
        min_quote_tokens: int = 4,
    ):
        self.tokenizer = tokenizer
        self.close_id = close_id
        self.newline_id = newline_id
        self.end_id = end_id
        self.doc = list(document_ids)
        self.max_quote_tokens = max_quote_tokens
        self.min_quote_tokens = min_quote_tokens
        self.budget = budget
        self.clean_breaks, self.dirty_breaks, self.blank = vocab_classes(tokenizer)
        self.special = frozenset(getattr(tokenizer, "all_special_ids", ()))
        self.labels = {
            text: tokenizer.encode(text, add_special_tokens=False) for kind, text in _PLAN if kind == "label"
        }
        self.tokens: list[int] = []  # every token so far, the first-token grade first
        self.step = 0  # index into _PLAN
        self.written = 0  # tokens of the current step so far
        self.field: list[int] = []  # the current free field's tokens
        self.matches: list[int] = []  # passage positions of the last quoted token (every span still possible)
        self.at_line_start = False

    @classmethod
    def for_prompt(
        cls, tokenizer: Any, prompt: Prompt, max_quote_tokens: int = 32, budget: int | None = None
    ) -> ExplanationConstraint | None:
        """The constraint for one prompt's passage (its document token ids), or None when `"` or a newline is not
        one token of this tokenizer."""
        quote = tokenizer.encode('"', add_special_tokens=False)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        if len(quote) != 1 or len(newline) != 1:
            return None
        start = prompt.query_prefix_len
        return cls(
            tokenizer,
            prompt.input_ids[start : start + prompt.document_tokens],
            quote[0],
            newline[0],
            end_id=tokenizer.eos_token_id,
            max_quote_tokens=max_quote_tokens,
            budget=budget,
        )

    @property
    def state(self) -> str:
        """The plan step now: label, free, quote, grade, end, or done."""
        return _PLAN[self.step][0] if self.step < len(_PLAN) else "done"

    @property
    def done(self) -> bool:
        return self.step >= len(_PLAN)

    @property
    def min_budget(self) -> int:
        """The fewest tokens a whole explanation takes (the grade, every label and one word per field); a smaller
        budget cannot fit the Verdict."""
        return 1 + self._reserve(-1)

    def _reserve(self, step: int | None = None) -> int:
        """Tokens the steps after `step` (default: the current one) need at least (a line break before each label
        counted)."""
        need = 0
        for kind, text in _PLAN[(self.step if step is None else step) + 1 :]:
            need += {"label": 1 + len(self.labels.get(text, ())), "free": 2, "quote": 1 + self.min_quote_tokens}.get(
                kind, 1 if kind == "grade" else 0
            )
        return need

    def _out_of_room(self) -> bool:
        return self.budget is not None and len(self.tokens) + 1 + self._reserve() >= self.budget

    def _choices(self) -> tuple[str, list[int]]:
        """("only", ids) the next token must be one of, or ("except", ids) it must not be."""
        kind, text = _PLAN[self.step] if self.step < len(_PLAN) else ("done", "")
        if kind == "done" or kind == "end":
            return ("only", [self.end_id]) if self.end_id is not None else ("except", [])
        if kind == "label":
            if not self.at_line_start and self.written == 0:
                return "only", [self.newline_id]
            return "only", [self.labels[text][self.written]]
        if kind == "grade":
            return "only", [self.tokens[0]]
        ends = [self.end_id] if self.end_id is not None else []
        if kind == "free":
            if len(self.field) >= FIELD_TOKENS[text] or (self.field and self._out_of_room()):
                return "only", [self.newline_id]
            if not self.tokenizer.decode(self.field, skip_special_tokens=True).strip():
                return "except", [*ends, *self.dirty_breaks, *self.blank]  # the field's first word
            return "except", [*ends, *self.dirty_breaks, *(self.special - self.clean_breaks), *self._repeats()]
        # the quote
        if self.written == 0:
            starts = {t for t in self.doc if t != self.close_id}
            return "only", sorted(starts) if starts else [self.close_id]
        following = {self.doc[i + 1] for i in self.matches if i + 1 < len(self.doc)} - {self.close_id}
        if not following or self.written >= self.max_quote_tokens or self._out_of_room():
            return "only", [self.close_id]
        return "only", sorted(following | ({self.close_id} if self.written >= self.min_quote_tokens else set()))

    def _repeats(self) -> list[int]:
        """Tokens that would repeat a `NO_REPEAT_NGRAM`-gram already in this field: transformers'
        `no_repeat_ngram_size` rule, applied to the free fields only (a quote may repeat the passage's words, and
        the labels are fixed), so that a small model's loops ("the first of the first of the first") end."""
        n, field = NO_REPEAT_NGRAM, self.field
        if len(field) < n:
            return []
        tail = field[-(n - 1) :]
        return [field[i + n - 1] for i in range(len(field) - n + 1) if field[i : i + n - 1] == tail]

    def allowed(self) -> list[int] | None:
        """Token ids the next token must be one of, or None when only a few are refused (a free field)."""
        how, ids = self._choices()
        return ids if how == "only" else None

    def advance(self, token: int) -> None:
        """Record the token that was emitted (picked here or forced by the caller: the first one is the grade)."""
        first = not self.tokens
        self.tokens.append(token)
        if first or self.done:
            self.at_line_start = token in self.clean_breaks
            return
        kind, text = _PLAN[self.step]
        if kind == "label":
            if not self.at_line_start and self.written == 0 and token == self.newline_id:
                self.at_line_start = True
                return
            self.written += 1
            self.at_line_start = False
            if self.written >= len(self.labels[text]):
                self._next()
        elif kind == "free":
            if token in self.clean_breaks and self.field:
                self.at_line_start = True
                self._next()
            else:
                self.field.append(token)
        elif kind == "quote":
            if token == self.close_id and self.written:
                self._next()
                return
            self.matches = (
                [i for i, t in enumerate(self.doc) if t == token]
                if self.written == 0
                else [i + 1 for i in self.matches if i + 1 < len(self.doc) and self.doc[i + 1] == token]
            )
            self.written += 1
        else:  # the grade, then the end
            self._next()

    def _next(self) -> None:
        self.step += 1
        if self.state == "end" and self.end_id is None:
            self.step += 1  # nothing to write: the explanation is done
        self.written = 0
        self.field = []
        self.matches = []

    def pick(self, logits: Any) -> int:
        """The greedy token of one row of next-token logits (vocab,), a torch tensor or an array, under the
        constraint, recorded."""
        row = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits, np.float32)
        how, ids = self._choices()
        if how == "only":
            token = ids[int(np.argmax(row[ids]))] if len(ids) > 1 else ids[0]
        else:
            masked = row.copy()
            masked[list(ids)] = -np.inf
            token = int(np.argmax(masked))
        self.advance(token)
        return token


def decode_explanation(
    first_token: int,
    step: Callable[[int, Any], tuple[Any, Any]],
    state: Any,
    max_new_tokens: int,
    end_ids: set[int],
    constraint: ExplanationConstraint | None = None,
) -> Iterator[int]:
    """Greedy explanation token ids: `first_token` (the grade), then each token picked from the next-token logits
    of `step(previous token, state) -> (logits (vocab,), state)` (the caller's model step, torch or ONNX, over its
    KV cache; `state` is the cache after the prompt), under `constraint` when given, until an end token (not
    yielded) or `max_new_tokens`. A consumer that stops iterating (a cancelled stream) runs no further step."""
    if max_new_tokens < 1:
        return
    token = first_token
    if constraint is not None:
        constraint.advance(token)
    count = 0
    while True:
        yield token
        count += 1
        if count >= max_new_tokens or (constraint is not None and constraint.done):
            return
        logits, state = step(token, state)
        token = constraint.pick(logits) if constraint is not None else int(logits.argmax())
        if token in end_ids:
            return
