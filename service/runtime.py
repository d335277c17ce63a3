"""The serving objects built from settings: batcher, scoring service and explainer, and how they stop.

`create_app`'s lifespan and the in-process `afrl.Reranker` both start them here, so a score computed in
process goes through the same prompt building, micro-batching (prefix reuse, length-bucketed passes) and
grade math as one served over HTTP; there is no second scoring path to drift from the first.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.backends.base import Backend
from service.batcher import Batcher, BatchLimits
from service.explainer import Explainer
from service.metrics import Metrics
from service.scoring import ScoringService
from service.settings import Settings


@dataclass
class Services:
    batcher: Batcher
    scoring: ScoringService
    explainer: Explainer
    tokenize: ThreadPoolExecutor

    def stop_taking_work(self) -> None:
        """The drain begins (SIGTERM): new scoring and explanations get 503, in-flight work goes on."""
        self.batcher.stop_taking_work()
        self.explainer.stop_taking_work()

    def cut(self) -> int:
        """The drain window is over: open streams end with an `error` event and queued or running scoring jobs
        with 503, each counted in `afrl_cancelled_total{reason="shutdown"}`. Returns how many were cut."""
        return self.batcher.cut() + self.explainer.cut()

    async def close(self, drain_timeout_s: float) -> None:
        """Stop taking work, drain what is in flight (up to the timeout), then stop the worker threads."""
        await self.batcher.close(drain_timeout_s)
        self.explainer.close()
        self.tokenize.shutdown(wait=True)


def start_services(backend: Backend, settings: Settings, metrics: Metrics) -> Services:
    """Build and start the services; call it on the event loop that will serve them (the batcher's loop task
    runs there)."""
    limits = BatchLimits(
        max_batch_pairs=settings.max_batch_pairs,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue_pairs=settings.max_queue_pairs,
        prefix_reuse=settings.prefix_reuse,
        prefix_reuse_min_documents=settings.prefix_reuse_min_documents,
    )
    batcher = Batcher(backend, limits, metrics)
    batcher.start()
    tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="afrl-tokenize")
    scoring = ScoringService(
        backend,
        batcher,
        metrics,
        settings.max_documents,
        settings.request_timeout_s,
        tokenize,
        max_instruction_tokens=settings.max_instruction_tokens,
    )
    explainer = Explainer(backend, metrics, settings.max_concurrent_explanations, settings.explain_timeout_s)
    return Services(batcher, scoring, explainer, tokenize)
