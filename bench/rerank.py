"""Item 9: the latency of a /rerank of 100 documents through the real HTTP server.

`afrl serve --model MODEL` in its own process, started as item 5 starts it (`service_load.Server`) with the
service's defaults otherwise: torch backend, `--dtype auto`, dynamic batching (`max_batch_pairs` 32), prefix
reuse. Only the request deadline is raised (AFRL_REQUEST_TIMEOUT_S), so that a slow model is measured instead of
answered with 503. One httpx client in this process sends `rerank_requests` POST /rerank requests one after the
other (after `warmup` untimed ones), each one query with `rerank_documents` passages of MS MARCO length
(`document_chars`; every request has other passages). Latency is end to end as the client sees it: encoding the
body, HTTP, tokenisation, scoring, the response.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.config import BenchConfig
from bench.models import service_dtype
from bench.service_load import Server, vm_hwm_mb
from bench.timing import percentile

log = logging.getLogger(__name__)

DEADLINE_S = 600.0


def _median(values: list[float]) -> float:
    return round(percentile(values, 50), 3)


def bench_rerank(cfg: BenchConfig, workdir: Path) -> dict[str, Any]:
    import httpx

    from service.settings import Settings

    if cfg.rerank_requests < 1:
        raise ValueError("rerank_requests must be at least 1")
    max_batch = Settings.model_fields["max_batch_pairs"].default
    n_docs = cfg.rerank_documents
    bodies = []
    for i in range(cfg.warmup + cfg.rerank_requests):
        pairs = workload.rerank_pairs(n_docs, cfg.document_chars, seed=100 + i)
        bodies.append({"query": pairs[0][0], "documents": [d for _, d in pairs]})
    lengths = [len(d) for b in bodies for d in b["documents"]]
    env = {"AFRL_REQUEST_TIMEOUT_S": str(DEADLINE_S)}
    server = Server(cfg.model, "torch", "auto", cfg.threads, max_batch, workdir / "server-rerank100.log", env)
    latencies: list[float] = []
    inference_ms: list[float] = []
    queue_ms: list[float] = []
    tokens: list[int] = []
    try:
        started = time.perf_counter()
        server.wait_ready()
        ready_s = time.perf_counter() - started
        log.info("bench: rerank100 server ready in %.1f s at %s", ready_s, server.url)
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S + 30) as client:
            for i, body in enumerate(bodies):
                start = time.perf_counter()
                r = client.post("/rerank", json=body)
                elapsed = time.perf_counter() - start
                if r.status_code != 200:
                    raise RuntimeError(f"/rerank answered {r.status_code}: {r.text[:300]}")
                results = r.json()["results"]
                if sorted(x["index"] for x in results) != list(range(n_docs)):
                    raise RuntimeError(f"/rerank returned {len(results)} results for {n_docs} documents")
                if i < cfg.warmup:
                    continue
                latencies.append(elapsed)
                inference_ms.append(float(r.headers["X-Inference-Time-Ms"]))
                queue_ms.append(float(r.headers["X-Queue-Time-Ms"]))
                tokens.append(int(r.json()["usage"]["total_tokens"]))
                log.info("bench: rerank100 request %d: %.2f s", i - cfg.warmup + 1, elapsed)
        peak_rss = vm_hwm_mb(server.proc.pid)
    finally:
        server.stop()
    return {
        "served_model": cfg.model,
        "served_backend": "torch",
        "dtype": service_dtype(),
        "max_batch_pairs": max_batch,
        "request": f"POST /rerank, one query with {n_docs} documents",
        "documents": n_docs,
        "document_chars": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        "prompt_tokens_per_document": round(sum(tokens) / len(tokens) / n_docs, 1),
        "requests": len(latencies),
        "warmup_requests": cfg.warmup,
        "ready_s": round(ready_s, 1),
        "latencies_s": [round(x, 4) for x in latencies],
        "p50_s": round(percentile(latencies, 50), 4),
        "p90_s": round(percentile(latencies, 90), 4),
        "max_s": round(max(latencies), 4),
        "server_inference_ms_p50": _median(inference_ms),
        "server_queue_ms_p50": _median(queue_ms),
        "peak_rss_mb": peak_rss,
        "rerank100_p50_s": round(percentile(latencies, 50), 4),
    }
