"""Splitting a completion into steps: the grade token, then one step per explanation line.

Step 0 is the first completion token (the grade token). Every later token belongs to the explanation line it is
part of: step k (1..4 = Intent, Evidence, Reasoning, Verdict) holds the tokens after the k-th newline, so the
newline that ends a line belongs to that line and the end-of-turn token belongs to the last line. Extra lines of a
malformed completion fold into the last step. Tokens are cut by the newlines they *decode to*, not by one newline
id: byte-level BPE vocabularies merge "\\n" with neighbouring characters ("\\n\\n", ".\\n").

`completion_lines` cuts the decoded text the same way, so the reward of step k is computed on exactly the text
whose tokens get step k's advantage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from afrl.contract import EXPLANATION_FIELDS

STEP_NAMES = ("grade", *(f.lower() for f in EXPLANATION_FIELDS))
NUM_STEPS = len(STEP_NAMES)


class NewlineCounter:
    """Number of newlines each token id decodes to (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, int] = {}

    def __call__(self, token_id: int) -> int:
        n = self._cache.get(token_id)
        if n is None:
            n = self.tokenizer.decode([token_id]).count("\n")
            self._cache[token_id] = n
        return n


def token_steps(ids: Sequence[int], newlines: Callable[[int], int], num_steps: int = NUM_STEPS) -> list[int]:
    """Step index of every completion token (see the module docstring)."""
    steps = []
    seen = 0
    for t, tok in enumerate(ids):
        steps.append(0 if t == 0 else min(max(seen, 1), num_steps - 1))
        seen += newlines(int(tok))
    return steps


def completion_lines(text: str, num_steps: int = NUM_STEPS) -> list[str | None]:
    """The text of each step: [first line, Intent line, ...]; None for a step the completion never reached.

    Lines past the last step are joined into it (a malformed completion must not pass for a well-formed one).
    """
    lines: list[str | None] = list(text.split("\n"))
    if len(lines) > num_steps:
        lines = [*lines[: num_steps - 1], "\n".join(str(x) for x in lines[num_steps - 1 :])]
    return lines + [None] * (num_steps - len(lines))
