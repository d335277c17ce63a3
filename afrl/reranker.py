"""`Reranker`: the sentence-transformers CrossEncoder API (`predict`, `rank`) plus `explain`, in process.

It runs the service's own objects (service/runtime.py: prompt building, the micro-batcher with prefix reuse and
length-bucketed passes, the grade math, the explainer) on a private event loop in one background thread, over
the same backends `afrl serve` loads (torch, or onnxruntime for an `afrl export` folder). A score here is the
number POST /rerank returns for the same model, settings and documents: for up to `batch_size` documents the
very same forward passes; longer inputs go in `batch_size` chunks (so a progress bar can move), which changes
only how passes are cut, not the order beyond float rounding.

    >>> from afrl import Reranker
    >>> reranker = Reranker(MODEL)  # "default", a model folder, or an export folder with backend="onnx"
    >>> scores = reranker.predict([("population of berlin", "Berlin had 3.5M people."), ("berlin", "Shoes.")])
    >>> len(scores), all(0.0 <= s <= 1.0 for s in scores)
    (2, True)
    >>> hits = reranker.rank("population of berlin", ["Running shoes.", "Berlin had 3.5M people."], top_k=1)
    >>> sorted(hits[0]), hits[0]["grade"] in range(4)
    (['corpus_id', 'grade', 'score'], True)
    >>> explanation = reranker.explain("population of berlin", "Berlin had 3.5M people.")
    >>> text = "".join(explanation)  # the explanation after the grade, chunk by chunk as it is generated
    >>> explanation.grade in range(4) and isinstance(text, str)
    True
    >>> reranker.close()

Every service setting applies (keyword argument, or environment variable `AFRL_<NAME>` as for `afrl serve`),
except that the batcher does not wait for company (`max_wait_ms=0`) and the deadlines are an hour, since
nobody else shares this process's queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from afrl.contract import GradeResult

T = TypeVar("T")

_IN_PROCESS_DEFAULTS: dict[str, Any] = {"max_wait_ms": 0.0, "request_timeout_s": 3600.0, "explain_timeout_s": 3600.0}


class Reranker:
    def __init__(
        self,
        model: Any = "default",
        backend: Literal["torch", "onnx"] = "torch",
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        **settings: Any,
    ):
        """`model`: any model spec `afrl serve --model` takes (or an already loaded service backend object);
        `backend`: "torch" or "onnx"; `batch_size`: pairs per forward pass and per progress step;
        `show_progress_bar`: None shows it for inputs longer than one batch; `settings`: service settings
        (`dtype`, `threads`, `onnx_providers`, `max_new_tokens`, `prefix_reuse`, ...)."""
        try:
            from service.backends import load_backend
            from service.metrics import Metrics
            from service.runtime import start_services
            from service.settings import Settings
        except ImportError as e:
            raise ImportError(
                f"afrl.Reranker runs the service's scoring code and needs its extras ({e}): "
                "pip install 'afrl-relevance[serve]'"
            ) from e
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        spec = model if isinstance(model, str) else getattr(model, "model_name", "model")
        options = {**_IN_PROCESS_DEFAULTS, **settings, "max_batch_pairs": batch_size}
        self.settings = Settings(model=spec, backend=backend, warmup=False, **options)
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.backend = load_backend(self.settings) if isinstance(model, str) else model
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="afrl-reranker", daemon=True)
        self._thread.start()
        self._closed = False

        async def start() -> Any:
            return start_services(self.backend, self.settings, Metrics())

        self._services = self._run(start())

    # ------------------------------------------------------------------------------------------------ API

    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        show_progress_bar: bool | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        """The AFRL score (expected grade / K in [0, 1]) of each (query, document) pair, in input order."""
        return [r.score for r in self._score(pairs, instruction, show_progress_bar)]

    def predict_grades(
        self,
        pairs: Sequence[Sequence[str]],
        show_progress_bar: bool | None = None,
        instruction: str | None = None,
        max_document_tokens: int | None = None,
    ) -> list[GradeResult]:
        """`predict` with the whole result per pair: `grade`, `score` and the grade `probabilities`.
        `max_document_tokens` lowers the model's document budget (as /rerank's `max_tokens_per_doc`)."""
        return self._score(pairs, instruction, show_progress_bar, max_document_tokens)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        show_progress_bar: bool | None = None,
        instruction: str | None = None,
    ) -> list[dict[str, Any]]:
        """`{"corpus_id", "score", "grade"}` (and `"text"` with `return_documents`) per document, best first;
        ties keep input order, as /rerank orders them."""
        from service.scoring import rank_order

        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None for all), got {top_k}")
        results = self._score([(query, d) for d in documents], instruction, show_progress_bar)
        hits = []
        for i in rank_order([r.score for r in results])[:top_k]:
            hit: dict[str, Any] = {"corpus_id": i, "score": results[i].score, "grade": results[i].grade}
            if return_documents:
                hit["text"] = documents[i]
            hits.append(hit)
        return hits

    def explain(
        self,
        query: str,
        document: str,
        max_new_tokens: int | None = None,
        instruction: str | None = None,
        max_document_tokens: int | None = None,
    ) -> Explanation:
        """The explanation of one pair as an iterator of text chunks (what the model writes after the grade);
        its `grade`, `score` and `probabilities` are there before the first chunk, its parsed `result` after
        the last. Close it (or use it in a `with` block) to stop a generation early."""
        _check_text("query", query)
        _check_text("document", document)
        services = self._services
        prompt = self._run(services.scoring.build([(query, document)], instruction, max_document_tokens))[0]
        services.explainer.admit()
        limit = min(max_new_tokens or self.settings.max_new_tokens, self.settings.max_new_tokens)
        events = services.explainer.events(prompt, document, limit, time.monotonic())
        return Explanation(events, self._run, self.backend.scale.labels)

    def close(self) -> None:
        """Drain and stop the worker threads and the event loop; the Reranker cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._run(self._services.close(self.settings.drain_timeout_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ internals

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed and self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this Reranker is closed; create a new one")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _score(
        self,
        pairs: Sequence[Sequence[str]],
        instruction: str | None,
        show: bool | None,
        max_document_tokens: int | None = None,
    ) -> list[GradeResult]:
        """GradeResults through ScoringService.score, one job per `batch_size` pairs (a progress step each)."""
        from tqdm.auto import tqdm

        checked = [_pair(i, p) for i, p in enumerate(pairs)]
        show = self.show_progress_bar if show is None else show
        bar = tqdm(
            total=len(checked),
            desc="Scoring",
            unit="pair",
            disable=not (show if show is not None else len(checked) > self.batch_size),
        )
        results: list[Any] = []
        try:
            for start in range(0, len(checked), self.batch_size):
                chunk = checked[start : start + self.batch_size]
                shared = len({q for q, _ in chunk}) == 1  # one query: its prefix is computed once, as in /rerank
                scored = self._run(
                    self._services.scoring.score(chunk, instruction, shared, max_document_tokens=max_document_tokens)
                )
                results.extend(scored.results)
                bar.update(len(chunk))
        finally:
            bar.close()
        return results


class Explanation(Iterator[str]):
    """Text chunks of one explanation, after the grade; `grade`, `score`, `probabilities` and `truncated` come
    from the first forward pass (the same numbers `predict` gives), `result` (the service's `done` event: full
    text, parsed fields, consistency, token counts) once the last chunk was read.

    One dropped unread needs no close: asyncio finalizes the service's event generator when it is collected,
    which stops the generation and frees its slot, as `close` does at once."""

    def __init__(self, events: Any, run: Any, labels: Sequence[str]):
        self._events = events
        self._run = run
        self._closed = False
        name, first = self._next_event()
        assert name == "score", f"an explanation starts with its score, got {name!r}"
        self.grade: int = first["grade"]
        self.score: float = first["score"]
        self.probabilities: list[float] = first["probabilities"]
        self.truncated: bool = first["truncated"]
        self.result: dict[str, Any] | None = None
        self._skip = len(labels[self.grade])  # the grade token's text comes first: it is the score above
        self._started = False

    def __next__(self) -> str:
        while not self._closed:
            name, payload = self._next_event()
            if name == "done":
                self.result = payload
                self.close()
                break
            text: str = payload["text"]
            cut = min(self._skip, len(text))
            text, self._skip = text[cut:], self._skip - cut
            if text and not self._started:
                self._started = True
                text = text.removeprefix("\n")  # the contract's one newline between the grade and the explanation
            if text:
                return text
        raise StopIteration

    def _next_event(self) -> tuple[str, dict[str, Any]]:
        async def step() -> tuple[str, dict[str, Any]]:
            return await self._events.__anext__()  # type: ignore[no-any-return]

        return self._run(step())  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the generation (within one token) and free its slot; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._run(self._events.aclose())

    def __enter__(self) -> Explanation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_text(name: str, text: Any) -> None:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty string, got {text!r:.60}")


def _pair(i: int, pair: Sequence[str]) -> tuple[str, str]:
    if isinstance(pair, str) or len(pair) != 2:
        raise ValueError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.80}")
    _check_text(f"pairs[{i}] query", pair[0])
    _check_text(f"pairs[{i}] document", pair[1])
    return pair[0], pair[1]
