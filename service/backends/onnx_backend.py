"""The onnxruntime backend: an export folder from `afrl export` (scorer.onnx, the decoder, afrl.json).

Scoring runs the sliced scorer graph (K+1 grade logits at the last real position). The explanation's score
event comes from that same scorer; the text is the argmax grade token, then the exported decoder's greedy
continuation (KV cache) one piece per token, with the stop flag checked between pieces. Prefix reuse is not
available here (the scorer graph has no cache inputs), so `grade_logits_shared_prefix` returns None and the
batcher takes the plain path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afrl.contract import Prompt
from service.backends.base import (
    EXPLAIN_UNAVAILABLE,
    ExplainEvent,
    ExplanationUnavailableError,
    ScoreStep,
    StreamEnd,
    TextDelta,
)

log = logging.getLogger(__name__)


class OnnxBackend:
    name = "onnx"

    def __init__(self, scorer: Any, generator: Any | None, model_name: str):
        self.scorer = scorer
        self.generator = generator
        self.can_explain = generator is not None  # a scorer-only export (a prefix LM's) serves /score, /rerank
        self.builder = scorer.builder
        self.scale = scorer.scale
        self.tokenizer = scorer.tokenizer
        self.model_name = model_name

    @classmethod
    def from_dir(cls, path: str, providers: str = "cpu", threads: int | None = None) -> OnnxBackend:
        try:
            from export.runtime import OnnxGenerator, OnnxScorer
        except ImportError as e:
            raise RuntimeError(
                "the onnx backend needs export/runtime.py (the export package) and onnxruntime: "
                f"install the project with its [serve,export] extras ({e})"
            ) from e
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a folder: with --backend onnx, --model is an export folder written by `afrl export`"
            )
        provider_list = _providers(providers)
        scorer = OnnxScorer.from_dir(folder, providers=provider_list, threads=threads)
        try:
            generator = OnnxGenerator.from_dir(folder, providers=provider_list, threads=threads)
        except (FileNotFoundError, ValueError) as e:
            # A scorer-only export still serves /score and /rerank; /explain then answers 501 (service.errors).
            log.warning("no explanation decoder in %s (%s): /explain is disabled", folder, e)
            generator = None
        return cls(scorer, generator, model_name=str(folder))

    def runtime_info(self) -> dict[str, Any]:
        """What /info and the bench report: the execution providers in use and which scorer graph."""
        providers = self.scorer.session.get_providers()
        return {"device": providers[0], "providers": providers, "scorer": self.scorer.variant}

    def manifest(self) -> dict[str, Any]:
        m = self.scorer.manifest
        return m.to_dict() if hasattr(m, "to_dict") else dict(m)

    def grade_logits(self, prompts: Sequence[Prompt]) -> np.ndarray:
        return np.asarray(self.scorer.grade_logits([p.input_ids for p in prompts]), dtype=np.float32)

    def grade_logits_shared_prefix(self, prompts: Sequence[Prompt], prefix_len: int) -> np.ndarray | None:
        return None

    def explain(self, prompt: Prompt, max_new_tokens: int, stop: threading.Event) -> Iterator[ExplainEvent]:
        logits = self.grade_logits([prompt])[0]
        yield ScoreStep(logits)
        if self.generator is None:
            raise ExplanationUnavailableError(EXPLAIN_UNAVAILABLE)
        # As in the torch backend, the first token is the argmax grade, so the explanation follows the sent score.
        grade = int(np.argmax(logits))
        yield TextDelta(self.scale.labels[grade], tokens=1)
        grade_id = self.scale.token_ids(self.tokenizer)[grade]
        count, reason = 1, "eos"
        stream = self.generator.generate_stream([*prompt.input_ids, grade_id], max_new_tokens=max_new_tokens - 1)
        try:
            for piece in stream:
                if stop.is_set():
                    reason = "cancelled"
                    break
                count += 1
                yield TextDelta(piece, tokens=1)
            else:
                reason = "length" if count >= max_new_tokens else "eos"
        finally:
            stream.close()
        yield StreamEnd(reason)


def _providers(name: str) -> Any:
    try:
        from export.providers import provider_list
    except ImportError:
        return None if name == "cpu" else [name]
    return provider_list(name)
