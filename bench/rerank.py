"""Item 9: the latency of a /rerank of 100 documents through the real HTTP server.

`afrl serve --model MODEL` in its own process, started as item 5 starts it (`service_load.Server`) with the
service's defaults otherwise: `--backend auto` and `--dtype auto` (so what a user's `afrl serve` runs on this
machine: torch bf16 on a native-bf16 CPU, else the INT8 ONNX scorer; service/backend_choice.py), dynamic batching
(`max_batch_pairs` 32), prefix reuse where the backend has it. The backend it chose is read from /info. The choice
is made once before the server starts (`prepare_auto_choice`: the one-off INT8 export of a first start, timed and
reported apart), so the timed server starts as a user's every later start does. Only the
request deadline is raised (AFRL_REQUEST_TIMEOUT_S), so that a slow model is measured instead of
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
from bench.service_load import Server, vm_hwm_mb
from bench.timing import percentile

log = logging.getLogger(__name__)

DEADLINE_S = 600.0


def _median(values: list[float]) -> float:
    return round(percentile(values, 50), 3)


def served_precision(runtime: dict[str, Any]) -> str:
    """The number type the server scores in, from /info's `runtime`: torch's dtype, or the ONNX scorer graph."""
    if "dtype" in runtime:
        return str(runtime["dtype"])
    return f"onnx {runtime['scorer']}"


def prepare_auto_choice(cfg: BenchConfig) -> float:
    """Make `--backend auto`'s choice in this process before the timed server starts, so that the server starts
    as every start after a user's first does: where auto picks the INT8 ONNX scorer, its export is built once into
    the AFRL cache and reused (service/backend_choice.py), and a server that exported in its own process would
    also carry the export's torch memory in its peak RSS. Returns the seconds it took (about 0 when cached)."""
    from service.backend_choice import choose
    from service.settings import Settings

    start = time.perf_counter()
    choice = choose(Settings(model=cfg.model, backend="auto", threads=cfg.threads, device="cpu"))
    log.info("bench: rerank100 backend auto: %s", choice.reason)
    return round(time.perf_counter() - start, 1)


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
    first_start_s = prepare_auto_choice(cfg)
    server = Server(cfg.model, "auto", "auto", cfg.threads, max_batch, workdir / "server-rerank100.log", env)
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
            info = client.get("/info").json()
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
        "served_backend": info["backend"],
        "precision": served_precision(info["runtime"]),
        "chosen": info["runtime"].get("chosen"),
        "max_batch_pairs": max_batch,
        "request": f"POST /rerank, one query with {n_docs} documents",
        "documents": n_docs,
        "document_chars": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        "prompt_tokens_per_document": round(sum(tokens) / len(tokens) / n_docs, 1),
        "requests": len(latencies),
        "warmup_requests": cfg.warmup,
        "ready_s": round(ready_s, 1),
        "first_start_prepare_s": first_start_s,
        "latencies_s": [round(x, 4) for x in latencies],
        "p50_s": round(percentile(latencies, 50), 4),
        "p90_s": round(percentile(latencies, 90), 4),
        "max_s": round(max(latencies), 4),
        "server_inference_ms_p50": _median(inference_ms),
        "server_queue_ms_p50": _median(queue_ms),
        "peak_rss_mb": peak_rss,
        "rerank100_p50_s": round(percentile(latencies, 50), 4),
    }
