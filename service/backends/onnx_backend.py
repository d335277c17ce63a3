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
    chosen: str | None = None  # why `--backend auto` picked this backend (service/backend_choice.py)

    def __init__(
        self,
        scorer: Any,
        generator: Any | None,
        model_name: str,
        explain_with: str | None = None,
        threads: int | None = None,
    ):
        self.scorer = scorer
        self.generator = generator
        # A scorer-only export (a prefix LM's) serves /score and /rerank; with `explain_with` (a torch model spec,
        # from `--backend auto`) it explains with that model, loaded on the first /explain, not at start.
        self.explain_with = explain_with if generator is None else None
        self.can_explain = generator is not None or self.explain_with is not None
        self._explainer: Any = None
        self._explainer_lock = threading.Lock()
        self._threads = threads
        self.builder = scorer.builder
        self.scale = scorer.scale
        self.tokenizer = scorer.tokenizer
        self.model_name = model_name

    @classmethod
    def from_dir(
        cls, path: str, providers: str = "cpu", threads: int | None = None, explain_with: str | None = None
    ) -> OnnxBackend:
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
            if explain_with is None:
                log.warning("no explanation decoder in %s (%s): /explain is disabled", folder, e)
            generator = None
        return cls(scorer, generator, model_name=str(folder), explain_with=explain_with, threads=threads)

    @property
    def explain_is_lazy(self) -> bool:
        """Whether /explain loads its model on first use (the warm-up must not load it)."""
        return self.explain_with is not None

    def _torch_explainer(self) -> Any:
        with self._explainer_lock:
            if self._explainer is None:
                from service.backends.torch_backend import TorchBackend

                log.info("loading %s with torch for /explain (first use)", self.explain_with)
                self._explainer = TorchBackend.from_spec(str(self.explain_with), threads=self._threads, device="cpu")
            return self._explainer

    def runtime_info(self) -> dict[str, Any]:
        """What /info and the bench report: the execution providers in use and which scorer graph."""
        providers = self.scorer.session.get_providers()
        info: dict[str, Any] = {"device": providers[0], "providers": providers, "scorer": self.scorer.variant}
        if self.chosen:
            info["chosen"] = self.chosen
        if self.explain_with is not None:
            info["explain_with"] = f"torch: {self.explain_with} ({'loaded' if self._explainer else 'on first use'})"
        return info

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
        if self.explain_with is not None:  # set only for a scorer-only export
            # The torch model writes the text after *this* scorer's grade, so the explanation follows the score sent.
            for event in self._torch_explainer().explain(prompt, max_new_tokens, stop, grade=int(np.argmax(logits))):
                if not isinstance(event, ScoreStep):
                    yield event
            return
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
