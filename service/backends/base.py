"""The small interface every inference backend implements; the batcher and the routes see nothing else.

A backend turns built prompts (token ids from `afrl.contract.PromptBuilder`) into grade logits, and streams an
explanation whose first step is the score. All methods are blocking and run in worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from afrl.contract import GradeScale, Prompt, PromptBuilder
from afrl.detokenize import text_deltas


@dataclass(frozen=True)
class ScoreStep:
    """The grade logits at the first output position: the score, known before any explanation token."""

    logits: np.ndarray


@dataclass(frozen=True)
class TextDelta:
    """New explanation text and how many tokens produced it."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class StreamEnd:
    reason: str  # "eos", "length" or "cancelled"


ExplainEvent = ScoreStep | TextDelta | StreamEnd


EXPLAIN_UNAVAILABLE = (
    "this ONNX export has no explanation decoder (it was exported with --no-decoder, or its decoder failed the "
    "export's check): /score and /rerank work; for /explain re-export it, or serve the model folder with "
    "--backend torch"
)


class ExplanationUnavailableError(Exception):
    """This backend cannot write explanations (a scorer-only ONNX export): /explain answers 501."""


def can_explain(backend: Any) -> bool:
    """Whether `backend` writes explanations; a backend without the `can_explain` attribute does."""
    return bool(getattr(backend, "can_explain", True))


def stream_explanation(
    tokenizer: Any, tokens: Iterable[int], max_new_tokens: int, stop: threading.Event, constraint: Any = None
) -> Iterator[TextDelta | StreamEnd]:
    """The events of an explanation being written: one TextDelta per token (`afrl.detokenize.text_deltas`: empty
    while a character is incomplete), then StreamEnd, "cancelled" as soon as `stop` is set (no further token is
    decoded), "length" when `max_new_tokens` ran out before the explanation's end, else "eos". `constraint` (an
    `afrl.explanation_constraint.ExplanationConstraint`) tells when a constrained explanation is complete."""
    count, reason = 0, "eos"
    for count, delta in enumerate(text_deltas(tokenizer, tokens), start=1):  # noqa: B007 (read after the loop)
        yield TextDelta(delta, tokens=1)
        if stop.is_set():
            reason = "cancelled"
            break
    else:
        complete = constraint is not None and constraint.state in ("end", "done")
        reason = "length" if count >= max_new_tokens and not complete else "eos"
    yield StreamEnd(reason)


@runtime_checkable
class Backend(Protocol):
    name: str
    model_name: str
    builder: PromptBuilder
    scale: GradeScale

    def manifest(self) -> dict[str, Any]:
        """What /info shows: the model's manifest (or the default contract for a plain base model)."""
        ...

    def grade_logits(self, prompts: Sequence[Prompt]) -> np.ndarray:
        """(n, K+1) float32 grade logits at the last prompt position, one row per prompt, in order."""
        ...

    def grade_logits_shared_prefix(self, prompts: Sequence[Prompt], prefix_len: int) -> np.ndarray | None:
        """Like grade_logits for prompts whose first prefix_len ids are identical; None if unsupported."""
        ...

    def explain(self, prompt: Prompt, max_new_tokens: int, stop: threading.Event) -> Iterator[ExplainEvent]:
        """ScoreStep first, then TextDelta(s) (the grade token's text first), then StreamEnd.

        `stop` is checked before every token: setting it ends the generation within one token.
        """
        ...
