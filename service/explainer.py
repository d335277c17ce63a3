"""Streamed explanations: the score event first, then text deltas, then the parsed explanation.

Generation runs in a worker thread (at most `max_concurrent_explanations` at once) and hands its events to the
event loop through a queue. When the consumer goes away (a client disconnect cancels the SSE generator), the
`finally` sets the stop flag and the backend stops within one token, so abandoned streams cost nothing more.

On shutdown (service/server.py) `stop_taking_work` refuses new explanations while open ones may finish; when the
drain window ends, `cut` wakes every open stream, which raises ShuttingDownError (an `error` event upstream, so a
stream always ends with `done` or `error`) and is counted in `afrl_cancelled_total{reason="shutdown"}`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from afrl.contract import Prompt, parse_completion, result_from_logits
from service.backends.base import Backend, ScoreStep, StreamEnd, TextDelta
from service.batcher import DeadlineError, QueueFullError, ShuttingDownError
from service.metrics import Metrics

_DONE = object()
_CUT = object()  # put into a stream's queue by `cut`: the drain window is over


class Explainer:
    def __init__(self, backend: Backend, metrics: Metrics, max_concurrent: int, timeout_s: float):
        self.backend = backend
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_waiting = 4 * max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="afrl-explain")
        self.active = 0  # generations running now (tests watch it fall to zero after a disconnect)
        self._streams: set[asyncio.Queue[Any]] = set()  # the event queues of open streams, for `cut`
        self._refusing = self._cut = False

    def admit(self) -> None:
        """Refuse early: 503 while shutting down, 429 when too many explanations already wait for a slot."""
        if self._refusing:
            raise ShuttingDownError("the server is shutting down; retry on another instance")
        if self._waiting >= self.max_waiting:
            raise QueueFullError(retry_after=max(1, int(self.timeout_s / 10)))

    async def events(
        self, prompt: Prompt, document: str, max_new_tokens: int, started: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event name, payload) pairs: ("score", ...), ("delta", ...)*, ("done", ...)."""
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.timeout_s)
        except TimeoutError as e:
            raise DeadlineError("no explanation slot became free before the deadline") from e
        finally:
            self._waiting -= 1
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams.add(queue)
        if self._cut:  # cut while this stream waited for its slot
            queue.put_nowait(_CUT)

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            self.active += 1
            try:
                for event in self.backend.explain(prompt, max_new_tokens, stop):
                    put(event)
                put(_DONE)
            except BaseException as e:
                put(e)
            finally:
                self.active -= 1

        try:
            future = loop.run_in_executor(self._executor, work)
            text, tokens, reason = "", 0, "eos"
            score_at = gen_start = time.monotonic()
            deadline = started + self.timeout_s
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=max(0.001, deadline - time.monotonic()))
                except TimeoutError as e:
                    raise DeadlineError(f"the explanation did not finish within {self.timeout_s:g} s") from e
                if item is _DONE:
                    break
                if item is _CUT:
                    self.metrics.cancelled.labels(reason="shutdown").inc()
                    raise ShuttingDownError(
                        "the server is shutting down; the explanation was cut at the end of "
                        "the drain window (AFRL_DRAIN_TIMEOUT_S); retry on another instance"
                    )
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, ScoreStep):
                    result = result_from_logits(item.logits.tolist())
                    score_at = gen_start = time.monotonic()
                    self.metrics.time_to_score.observe(score_at - started)
                    self.metrics.pairs_scored.inc()
                    self.metrics.predicted_grade.labels(grade=str(result.grade)).inc()
                    yield "score", {**result.to_dict(), "truncated": prompt.truncated}
                elif isinstance(item, TextDelta):
                    tokens += item.tokens
                    self.metrics.explanation_tokens.inc(item.tokens)
                    if item.text:
                        text += item.text
                        yield "delta", {"text": item.text}
                elif isinstance(item, StreamEnd):
                    reason = item.reason
            parsed = parse_completion(text, document, self.backend.scale)
            end = time.monotonic()
            yield (
                "done",
                {
                    "text": text,
                    "explanation": parsed.to_dict(),
                    "consistent": parsed.consistent,
                    "prompt_tokens": len(prompt.input_ids),
                    "completion_tokens": tokens,
                    "stopped": reason,
                    "timings": {
                        "time_to_score_ms": round((score_at - started) * 1000, 3),
                        "generation_ms": round((end - gen_start) * 1000, 3),
                        "total_ms": round((end - started) * 1000, 3),
                    },
                },
            )
            await future
        finally:
            # Runs on normal end, on errors and when the client disconnects (the generator is cancelled/closed).
            stop.set()
            self._streams.discard(queue)
            self._slots.release()

    def stop_taking_work(self) -> None:
        """Refuse new explanations (503) while open streams finish: the drain."""
        self._refusing = True

    def cut(self) -> int:
        """End every open stream now with ShuttingDownError (the drain window is over); returns how many."""
        self._refusing = self._cut = True
        for queue in self._streams:
            queue.put_nowait(_CUT)
        return len(self._streams) + self._waiting

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
