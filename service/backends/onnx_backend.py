"""The onnxruntime backend: an export folder from `afrl export` (scorer.onnx, the decoder, afrl.json).

Scoring runs the sliced scorer graph (K+1 grade logits at the last real position). The explanation's score
event comes from that same scorer; the text is the argmax grade token, then the exported decoder's (KV cache;
a causal LM's or a prefix LM's, `export.runtime.load_generator`) greedy continuation under the explanation
constraint, one piece per token, with the stop flag checked between pieces, as the torch backend writes it.
Prefix reuse is not available here (the scorer graph has no cache inputs), so `grade_logits_shared_prefix`
returns None and the batcher takes the plain path.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afrl.contract import Prompt
from afrl.explanation_constraint import ExplanationConstraint, decode_explanation
from service.backends.base import (
    EXPLAIN_UNAVAILABLE,
    ExplainEvent,
    ExplanationUnavailableError,
    ScoreStep,
    stream_explanation,
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
        load_generator: Callable[[], Any] | None = None,
    ):
        """`generator` is the export's decoder (`export.runtime`), or `load_generator` loads it on the first
        /explain, so a replica that only scores never holds a second copy of the weights."""
        self.scorer = scorer
        self._generator = generator
        self._load_generator = load_generator if generator is None else None
        has_decoder = generator is not None or load_generator is not None
        # A scorer-only export serves /score and /rerank; with `explain_with` (a torch model spec, from
        # `--backend auto`) it explains with that model, loaded on the first /explain, not at start.
        self.explain_with = explain_with if not has_decoder else None
        self.can_explain = has_decoder or self.explain_with is not None
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
            from export.runtime import OnnxScorer, has_generator, load_generator
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
        loader = None
        if has_generator(folder):
            loader = functools.partial(load_generator, folder, providers=provider_list, threads=threads)
        elif explain_with is None:
            # A scorer-only export still serves /score and /rerank; /explain then answers 501 (service.errors).
            log.warning("no explanation decoder in %s: /explain is disabled", folder)
        return cls(
            scorer, None, model_name=str(folder), explain_with=explain_with, threads=threads, load_generator=loader
        )

    @property
    def generator(self) -> Any | None:
        """The export's decoder, loaded now if it was left for the first /explain."""
        with self._explainer_lock:
            if self._generator is None and self._load_generator is not None:
                log.info("loading the ONNX explanation decoder of %s (first use)", self.model_name)
                self._generator = self._load_generator()
            return self._generator

    @property
    def explain_is_lazy(self) -> bool:
        """Whether /explain loads its model on first use (the warm-up must not load it)."""
        return self.explain_with is not None or (self._generator is None and self._load_generator is not None)

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
        if self._generator is not None or self._load_generator is not None:
            info["decoder"] = "loaded" if self._generator is not None else "on first /explain"
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
        # As in the torch backend: the first token is the argmax grade, so the explanation follows the sent score,
        # and the rest is kept to the contract's shape (afrl.explanation_constraint), decoded by the same loop.
        first = self.scale.token_ids(self.tokenizer)[int(np.argmax(logits))]
        generator = self.generator

        def step(token: int, state: Any) -> tuple[np.ndarray, Any]:
            if state is None:  # the prompt pass, after the grade's text has gone out
                _, state = generator.prefill(prompt.input_ids)
            return generator.step(token, state)

        constraint = ExplanationConstraint.for_prompt(self.tokenizer, prompt, budget=max_new_tokens)
        tokens = decode_explanation(first, step, None, max_new_tokens, generator.eos_ids, constraint)
        yield from stream_explanation(self.tokenizer, tokens, max_new_tokens, stop, constraint)


def _providers(name: str) -> Any:
    try:
        from export.providers import provider_list
    except ImportError:
        return None if name == "cpu" else [name]
    return provider_list(name)
