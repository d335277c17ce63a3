"""Incremental detokenisation: the text each new token adds, for streaming an explanation as it is written.

Why a module: the torch backend, the ONNX backend and the torch-free `export.runtime` generators all stream text
one token at a time, and a byte-level token can end in the middle of a UTF-8 character (decoded alone it shows as
U+FFFD). Decoding the whole prefix each time and sending only what is new and complete is what transformers'
`TextStreamer` does; this is that rule without its print-oriented word buffering.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def text_deltas(tokenizer: Any, tokens: Iterable[int]) -> Iterator[str]:
    """One string per token id: the new text it completes, or "" while the text ends in an incomplete character
    (it arrives with a later token). The text of a held-back tail that never completes is not sent."""
    ids: list[int] = []
    sent = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(sent) or not text.startswith(sent):
            yield ""
        else:
            yield text[len(sent) :]
            sent = text
