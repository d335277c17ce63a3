"""service.batcher on a scripted backend: length bucketing under the pair and token budgets, results in each
request's order, a failing pair failing only its own request, and the padding-efficiency counters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from afrl.contract import GradeScale, Prompt
from service.batcher import Batcher, BatchLimits
from service.metrics import Metrics

POISON = 999


class ScriptedBackend:
    """Grade logits whose first column is the prompt's first token id; a prompt holding POISON raises."""

    scale = GradeScale()

    def __init__(self) -> None:
        self.passes: list[list[int]] = []  # the prompt lengths of every pass, in pass order

    def grade_logits(self, prompts):
        self.passes.append([len(p.input_ids) for p in prompts])
        if any(POISON in p.input_ids for p in prompts):
            raise ValueError("a poisoned pair")
        return np.array([[p.input_ids[0], 0, 0, 0] for p in prompts], dtype=np.float32)

    def grade_logits_shared_prefix(self, prompts, prefix_len):
        return None


def _prompt(first: int, length: int, poison: bool = False) -> Prompt:
    ids = [first] + [POISON if poison else 1] * (length - 1)
    return Prompt(ids, False, 1, length - 1, 0, 1)


def _run(jobs, limits):
    """Submit every job at once (one batch) and return (results or exceptions, backend, metrics)."""
    backend, metrics = ScriptedBackend(), Metrics()

    async def main():
        batcher = Batcher(backend, limits, metrics)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(j, timeout_s=10) for j in jobs), return_exceptions=True)
        finally:
            await batcher.close(1.0)

    return asyncio.run(main()), backend, metrics


def test_passes_bucket_similar_lengths_within_both_budgets_and_results_keep_request_order():
    """Two requests (8 pairs, 77 real tokens) in one batch: the pairs are sorted by length and cut where the padded
    token budget (80) would be passed, so short pairs never pad to the long ones; each request gets its own rows,
    in its order."""
    a = [_prompt(10 + i, n) for i, n in enumerate([3, 20, 4, 19, 5])]
    b = [_prompt(50 + i, n) for i, n in enumerate([18, 2, 6])]
    limits = BatchLimits(max_batch_pairs=8, max_batch_tokens=80, max_wait_ms=50, prefix_reuse=False)
    results, backend, _ = _run([a, b], limits)
    assert backend.passes == [[2, 3, 4, 5, 6], [18, 19, 20]]
    for p in backend.passes:
        assert len(p) <= limits.max_batch_pairs and len(p) * max(p) <= limits.max_batch_tokens
    (logits_a, _), (logits_b, _) = results
    assert logits_a[:, 0].tolist() == [10, 11, 12, 13, 14]
    assert logits_b[:, 0].tolist() == [50, 51, 52]


def test_a_failing_pair_fails_only_its_own_request():
    good = [_prompt(1, 4), _prompt(2, 5)]
    bad = [_prompt(3, 4), _prompt(4, 5, poison=True)]
    also_good = [_prompt(5, 4)]
    limits = BatchLimits(max_batch_pairs=8, max_wait_ms=50, prefix_reuse=False)  # all three in one batch
    results, backend, _ = _run([good, bad, also_good], limits)
    assert results[0][0][:, 0].tolist() == [1, 2] and results[2][0][:, 0].tolist() == [5]
    assert isinstance(results[1], ValueError) and "poisoned" in str(results[1])
    assert backend.passes[0] == [4, 4, 4, 5, 5] and len(backend.passes) == 4  # shared pass, then each job alone


def test_padding_efficiency_counters():
    jobs = [[_prompt(1, 10), _prompt(2, 10), _prompt(3, 5), _prompt(4, 5)]]
    _, backend, metrics = _run(jobs, BatchLimits(max_batch_pairs=2, max_wait_ms=20, prefix_reuse=False))
    real = metrics.registry.get_sample_value("afrl_real_tokens_total")
    padded = metrics.registry.get_sample_value("afrl_padded_tokens_total")
    assert backend.passes == [[5, 5], [10, 10]] and real == padded == 30  # bucketed: no padding at all
    jobs = [[_prompt(1, 10), _prompt(3, 5)]]
    _, _, metrics = _run(jobs, BatchLimits(max_batch_pairs=2, max_wait_ms=20, prefix_reuse=False))
    real = metrics.registry.get_sample_value("afrl_real_tokens_total")
    padded = metrics.registry.get_sample_value("afrl_padded_tokens_total")
    assert (real, padded) == (15, 20) and real / padded == pytest.approx(0.75)


def test_an_idle_server_runs_a_lone_request_at_once_and_keeps_the_window_under_contention():
    """With a 1.5 s window: a single request on an idle batcher is not held for it; after a batch of several
    jobs (contention) the window is kept, so a request 50 ms behind another joins its pass."""
    import time

    backend, metrics = ScriptedBackend(), Metrics()
    limits = BatchLimits(max_batch_pairs=8, max_wait_ms=1500, prefix_reuse=False)

    async def main():
        batcher = Batcher(backend, limits, metrics)
        batcher.start()
        try:
            start = time.monotonic()
            await batcher.submit([_prompt(1, 3)], timeout_s=10)
            lone_s = time.monotonic() - start
            await asyncio.gather(*(batcher.submit([_prompt(2, 3)], timeout_s=10) for _ in range(2)))  # contention

            async def late():
                await asyncio.sleep(0.05)
                return await batcher.submit([_prompt(4, 4)], timeout_s=10)

            await asyncio.gather(batcher.submit([_prompt(3, 4)], timeout_s=10), late())
            return lone_s
        finally:
            await batcher.close(1.0)

    lone_s = asyncio.run(main())
    assert lone_s < 0.75  # not held for the 1.5 s window
    assert backend.passes == [[3], [3, 3], [4, 4]]  # the late request joined the pass of the one before it
