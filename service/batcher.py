"""Dynamic micro-batching: pairs from concurrent requests share forward passes.

A request submits its prompts as one job. The batcher collects jobs until `max_batch_pairs` pairs or
`max_batch_tokens` padded tokens are reached or the oldest job has waited `max_wait_ms`, then runs them in a
worker thread so the event loop keeps serving. The wait window is only kept under contention (the last batch
held several jobs, or jobs arrived while it ran): an idle server runs a lone request at once, so batching costs
nothing at concurrency 1 (the window had made it 0.90x of batching off, bench/results/default_student_service.md),
and under load the jobs that queue during a pass fill the next one. Inside a batch, prompts are sorted by length
and cut into forward passes that stay under the token budget (length bucketing: little padding). A job whose
documents share one query prefix runs on the backend's prefix-reuse path.

A pass that raises fails only the requests whose pairs caused it: the batch is rerun one job at a time, and each
job gets its own result or its own error (a bad input in one request never costs the others their answer).

Limits: the queue holds at most `max_queue_pairs` waiting pairs (more raises QueueFullError, 429 upstream); a
job past its deadline is dropped before it costs a forward pass (DeadlineError, 503). Cancellation is one
mechanism: a job is abandoned when its future is cancelled, whether by its deadline (`wait_for` in `submit`) or
by its caller going away (the route cancels the request task, service/cancellation.py). An abandoned job is
skipped while queued, and a running one stops between forward passes (the worker checks `Job.abandoned` before
each pass), so a request nobody waits for costs at most the pass already running. Every drop is counted in
`afrl_cancelled_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from afrl.contract import Prompt
from service.backends.base import Backend
from service.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the scoring queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class DeadlineError(Exception):
    """The request was not served before its deadline."""


class ShuttingDownError(Exception):
    """The server is draining and takes no new work."""


@dataclass
class BatchLimits:
    max_batch_pairs: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue_pairs: int = 2048
    prefix_reuse: bool = True
    prefix_reuse_min_documents: int = 4


@dataclass
class Job:
    prompts: Sequence[Prompt]
    shared_prefix: int | None
    deadline: float
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0
    inference_s: float = 0.0
    # Set (from the event loop) when the future is cancelled; read by the worker thread between passes.
    abandoned: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.future.add_done_callback(lambda f: self.abandoned.set() if f.cancelled() else None)

    @property
    def tokens(self) -> int:
        return sum(len(p.input_ids) for p in self.prompts)


@dataclass
class Timing:
    queue_s: float
    inference_s: float


class Batcher:
    def __init__(self, backend: Backend, limits: BatchLimits, metrics: Metrics):
        self.backend = backend
        self.limits = limits
        self.metrics = metrics
        self._jobs: deque[Job] = deque()
        self._pending_pairs = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="afrl-infer")
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self._running: list[Job] = []  # the batch in the worker now (cut() ends it on shutdown)
        self._last_pass_s = 0.05
        self._contended = False  # whether the last batch saw concurrent work: only then wait out max_wait_ms

    # ------------------------------------------------------------------------------------------------ public

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="afrl-batcher")

    @property
    def pending_pairs(self) -> int:
        return self._pending_pairs

    async def submit(
        self, prompts: Sequence[Prompt], timeout_s: float, shared_prefix: int | None = None
    ) -> tuple[np.ndarray, Timing]:
        """Grade logits (n, K+1) of the prompts, in order, and how long they queued and ran."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        n = len(prompts)
        if self._pending_pairs and self._pending_pairs + n > self.limits.max_queue_pairs:
            passes = math.ceil(self._pending_pairs / self.limits.max_batch_pairs)
            raise QueueFullError(retry_after=max(1, math.ceil(passes * self._last_pass_s)))
        loop = asyncio.get_running_loop()
        job = Job(prompts, shared_prefix, time.monotonic() + timeout_s, loop.create_future())
        self._jobs.append(job)
        self._pending_pairs += n
        self.metrics.queue_depth.set(self._pending_pairs)
        self._wakeup.set()
        ahead = self._pending_pairs - n
        try:
            # wait_for cancels the future on timeout or when this task is cancelled (the client left): the
            # loop skips the job while queued and the worker stops it between passes (no wasted work).
            logits = await asyncio.wait_for(job.future, timeout=timeout_s)
        except TimeoutError as e:
            self.metrics.cancelled.labels(reason="deadline").inc()
            raise DeadlineError(deadline_message(timeout_s, n, ahead)) from e
        except asyncio.CancelledError:
            self.metrics.cancelled.labels(reason="client_disconnected").inc()
            raise
        return logits, Timing(job.queue_s, job.inference_s)

    def stop_taking_work(self) -> None:
        """Refuse new jobs (ShuttingDownError, 503) while the queued and running ones finish: the drain."""
        self._closing = True

    def cut(self) -> int:
        """The drain window is over: every job still queued or running ends now with ShuttingDownError (503) and
        is counted as `shutdown`; a running one stops before its next pass. Returns how many were cut."""
        self._closing = True
        cut = 0
        for job in [*self._jobs, *self._running]:
            if not job.future.done():
                cut += 1
                self.metrics.cancelled.labels(reason="shutdown").inc()
                job.abandoned.set()
                job.future.set_exception(ShuttingDownError("the server is shutting down and the drain window ended"))
        return cut

    async def close(self, drain_timeout_s: float) -> None:
        """Stop taking work, let queued and running jobs finish (up to the timeout), then stop the loop."""
        self._closing = True
        end = time.monotonic() + drain_timeout_s
        while (self._jobs or self._busy) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._jobs:
            if not job.future.done():
                self.metrics.cancelled.labels(reason="shutdown").inc()
                job.future.set_exception(ShuttingDownError("the server shut down before this request ran"))
        self._jobs.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------------------ loop

    def _take(self) -> Job:
        job = self._jobs.popleft()
        self._pending_pairs -= len(job.prompts)
        self.metrics.queue_depth.set(self._pending_pairs)
        return job

    async def _collect(self) -> list[Job]:
        """Jobs for the next batch: wait for one, then fill until a limit or the oldest job's wait is up."""
        while not self._jobs:
            self._wakeup.clear()
            await self._wakeup.wait()
        limits = self.limits
        window = limits.max_wait_ms / 1000 if self._contended else 0.0
        fill_until = self._jobs[0].enqueued + window
        batch: list[Job] = []
        pairs = tokens = 0
        while True:
            while self._jobs:
                job = self._jobs[0]
                if job.future.done():  # cancelled by its caller or already timed out
                    self._take()
                    continue
                if batch and (
                    pairs + len(job.prompts) > limits.max_batch_pairs or tokens + job.tokens > limits.max_batch_tokens
                ):
                    return batch
                batch.append(self._take())
                pairs += len(job.prompts)
                tokens += job.tokens
            remaining = fill_until - time.monotonic()
            if pairs >= limits.max_batch_pairs or tokens >= limits.max_batch_tokens or remaining <= 0:
                if batch:
                    return batch
                # Everything queued was abandoned: go back to waiting for new work.
                while not self._jobs:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                fill_until = self._jobs[0].enqueued + limits.max_wait_ms / 1000
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            now = time.monotonic()
            live = []
            for job in batch:
                job.queue_s = now - job.enqueued
                self.metrics.queue_latency.observe(job.queue_s)
                if now > job.deadline:
                    self.metrics.cancelled.labels(reason="deadline").inc()
                    job.future.set_exception(
                        DeadlineError(
                            f"the request's deadline passed after {job.queue_s:.1f} s in the queue, before it was "
                            "scored; retry later, send fewer documents or raise AFRL_REQUEST_TIMEOUT_S"
                        )
                    )
                else:
                    live.append(job)
            if not live:
                continue
            self._busy = True
            self._running = live
            start = time.monotonic()
            try:
                results: list[np.ndarray | BaseException] = list(
                    await loop.run_in_executor(self._executor, self._execute, live)
                )
            except Exception as e:
                if len(live) == 1:
                    log.exception("inference failed for a job of %d pairs", len(live[0].prompts))
                    results = [e]
                else:  # find whose pairs failed: each job alone, so the others still get their answer
                    log.warning("a pass of %d jobs failed (%s); rerunning them one at a time", len(live), e)
                    results = [await self._execute_alone(loop, job) for job in live]
            finally:
                self._busy = False
                self._running = []
            elapsed = time.monotonic() - start
            self._contended = len(live) > 1 or bool(self._jobs)
            for job, result in zip(live, results, strict=True):
                job.inference_s = elapsed
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    async def _execute_alone(self, loop: asyncio.AbstractEventLoop, job: Job) -> np.ndarray | BaseException:
        if job.future.done():
            return np.empty((0, 0), dtype=np.float32)  # abandoned meanwhile: nobody reads it
        self._running = [job]
        try:
            return (await loop.run_in_executor(self._executor, self._execute, [job]))[0]
        except Exception as e:
            log.exception("inference failed for a job of %d pairs", len(job.prompts))
            return e

    # ------------------------------------------------------------------------------------------------ worker

    def _execute(self, jobs: list[Job]) -> list[np.ndarray]:
        """Runs in the worker thread: every job's logits, with prefix reuse and length-bucketed passes."""
        k = len(self.backend.scale.names)
        out = [np.empty((len(j.prompts), k), dtype=np.float32) for j in jobs]
        plain: list[tuple[int, int, Prompt]] = []
        for ji, job in enumerate(jobs):
            if self._prefix_job(job) and self._run_prefix(job, out[ji]):
                continue
            plain.extend((ji, pi, p) for pi, p in enumerate(job.prompts))
        plain.sort(key=lambda t: len(t[2].input_ids))
        for chunk in self._chunks(plain):
            chunk = [item for item in chunk if not jobs[item[0]].abandoned.is_set()]
            if not chunk:  # every job in this pass was abandoned: its rows are never read
                continue
            logits = self._timed_pass([p for _, _, p in chunk], lambda ps: self.backend.grade_logits(ps))
            assert logits is not None
            for row, (ji, pi, _) in zip(logits, chunk, strict=True):
                out[ji][pi] = row
        return out

    def _prefix_job(self, job: Job) -> bool:
        return (
            self.limits.prefix_reuse
            and job.shared_prefix is not None
            and len(job.prompts) >= self.limits.prefix_reuse_min_documents
        )

    def _run_prefix(self, job: Job, out: np.ndarray) -> bool:
        prefix = job.shared_prefix
        assert prefix is not None
        order = sorted(range(len(job.prompts)), key=lambda i: len(job.prompts[i].input_ids))
        for chunk in self._chunks([(0, i, job.prompts[i]) for i in order], offset=prefix):
            if job.abandoned.is_set():
                return True  # nobody reads the rest: stop between passes
            prompts = [p for _, _, p in chunk]
            logits = self._timed_pass(
                prompts, lambda ps: self.backend.grade_logits_shared_prefix(ps, prefix), offset=prefix
            )
            if logits is None:
                return False  # the backend cannot reuse prefixes: nothing was computed, take the plain path
            for row, (_, pi, _) in zip(logits, chunk, strict=True):
                out[pi] = row
        return True

    def _chunks(self, items: list[tuple[int, int, Prompt]], offset: int = 0) -> list[list[tuple[int, int, Prompt]]]:
        """Length-sorted items cut into passes under the pair and padded-token limits (at least one each)."""
        chunks: list[list[tuple[int, int, Prompt]]] = []
        current: list[tuple[int, int, Prompt]] = []
        for item in items:
            width = len(item[2].input_ids) - offset
            if current and (
                len(current) >= self.limits.max_batch_pairs or (len(current) + 1) * width > self.limits.max_batch_tokens
            ):
                chunks.append(current)
                current = []
            current.append(item)
        if current:
            chunks.append(current)
        return chunks

    def _timed_pass(self, prompts: list[Prompt], fn, offset: int = 0) -> np.ndarray | None:  # type: ignore[no-untyped-def]
        """Run one pass and record it: latency, pairs, padded tokens, and real against padded tokens (after a
        reused prefix of `offset` tokens, which is computed once and never padded)."""
        start = time.monotonic()
        logits = fn(prompts)
        elapsed = time.monotonic() - start
        if logits is not None:
            self._last_pass_s = elapsed
            self.metrics.model_pairs.inc(len(prompts))
            self.metrics.inference_latency.observe(elapsed)
            self.metrics.batch_size.observe(len(prompts))
            widths = [len(p.input_ids) - offset for p in prompts]
            self.metrics.batch_tokens.observe(len(prompts) * max(len(p.input_ids) for p in prompts))
            self.metrics.real_tokens.inc(sum(widths))
            self.metrics.padded_tokens.inc(len(widths) * max(widths))
        return logits


def deadline_message(timeout_s: float, pairs: int, ahead: int) -> str:
    """The 503 body of a request that ran out of time: what was slow, and what the caller can change."""
    where = f"{ahead} pairs were queued ahead of it" if ahead else "nothing was queued ahead of it"
    return (
        f"not scored within the {timeout_s:g} s deadline (AFRL_REQUEST_TIMEOUT_S) for its {pairs} pairs; {where}. "
        "Send fewer or shorter documents, or raise the deadline"
    )
