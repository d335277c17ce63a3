"""Items 5 and 7: the HTTP service under load, with dynamic batching on and off, and its peak memory.

The server is the real thing, `afrl serve` (uvicorn + the app from `service.app.create_app`) in its own process on
a free 127.0.0.1 port, so that its peak resident memory (VmHWM in /proc/PID/status) is its own and the load
generator (httpx, asyncio, in this process) does not share its interpreter. Two run side by side: one with the
default settings (dynamic batching, `max_batch_pairs` 32) and one with `max_batch_pairs` 1 (batching off); nothing
else differs. Each request is a /score call with one (query, document) pair of about `service_prompt_tokens`
tokens, so batching can only come from concurrent requests. At each concurrency, `c` clients send requests back to
back for `service_seconds`, to one server and then the other, for `service_rounds` rounds in alternating order
(on, off, control, control, off, on, ...), while the others idle; a mode's figures pool its rounds (completed
requests over the time of its rounds, percentiles over all its latencies). Run one mode after the other instead,
and the shared machine's load, which drifts over a minute, moved the on/off ratio by 10-20 % between runs of the
same code (bench/results/*.md of 2026-12-06). The control is a second batching-off server, identical to the first:
its ratio to the first (`control_ratio_by_concurrency`) is what two servers that differ in nothing show here, so an
on/off ratio inside that band is no evidence either way (two identical servers differed by up to 8 % at
concurrency 1 in a by-hand check on a 2-core EPYC). Latencies are per request as the client sees them.

HTTP overhead at concurrency 1 = the median /score latency with batching off (no batching window to wait
out) minus the median time of the same work in process: the backend's own prompt building and scoring call.
Both run on this machine's cores with the other side idle, but the client's own CPU time is part of the HTTP
figure: that is what a caller on the same host pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import workload
from bench.config import BenchConfig
from bench.timing import measure, percentile, ratio

log = logging.getLogger(__name__)

CONTROL = "batching_off_control"  # a second batching-off server: the noise floor of the on/off ratios


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a live process, from /proc (Linux); None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Server:
    """`afrl serve` in a subprocess; its log goes to a file so a full pipe can never stall it."""

    def __init__(
        self, model: str, backend: str, dtype: str, threads: int, max_batch_pairs: int, log_path: Path,
        env: dict[str, str] | None = None,
    ):  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "AFRL_LOG_LEVEL": "warning", **(env or {})}
        self.cmd = [
            sys.executable, "-m", "afrl.cli", "serve", "--model", model, "--backend", backend, "--port",
            str(self.port), "--threads", str(threads), "--max-batch-pairs", str(max_batch_pairs), "--dtype", dtype,
            "--device", "cpu",  # the CPU benchmark: never a GPU the machine may also have
        ]  # fmt: skip
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {timeout_s:g} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: uvicorn drains, the lifespan closes the batcher
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


async def _load(url: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    first_error: list[str] = []
    min_per_worker = 2  # even on a starved machine every level measures something
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker(offset: int) -> None:
            i = offset
            while i < offset + min_per_worker * concurrency or time.perf_counter() < stop_at:
                start = time.perf_counter()
                r = await client.post("/score", json=bodies[i % len(bodies)])
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    first_error[:] = first_error or [r.text[:300]]
                i += concurrency

        begin = time.perf_counter()
        stop_at = begin + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return level_stats(concurrency, latencies, errors, first_error[0] if first_error else None, elapsed)


def level_stats(
    concurrency: int, latencies: list[float], errors: dict[str, int], first_error: str | None, elapsed: float
) -> dict[str, Any]:
    """One level's figures from its latencies (s) over `elapsed` seconds of load; `_latencies` keeps them for
    `pool_rounds` and is dropped from what is written."""
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "first_error": first_error,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 3),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "mean_ms": round(sum(latencies) / max(1, len(latencies)) * 1000, 2),
        "_latencies": latencies,
    }


def pool_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One level's figures over several rounds of it: requests over the summed time, percentiles over every
    latency; `rounds` keeps each round's throughput, so their spread shows."""
    latencies = [x for r in rounds for x in r["_latencies"]]
    errors: dict[str, int] = {}
    for r in rounds:
        for status, n in r["error_statuses"].items():
            errors[status] = errors.get(status, 0) + n
    first = next((r["first_error"] for r in rounds if r["first_error"]), None)
    out = level_stats(rounds[0]["concurrency"], latencies, errors, first, sum(r["seconds"] for r in rounds))
    del out["_latencies"]
    out["rounds_rps"] = [r["throughput_rps"] for r in rounds]
    return out


def request_bodies(builder: Any, tokenizer: Any, n: int, prompt_tokens: int) -> list[dict[str, Any]]:
    """/score bodies with one pair each, whose documents are cut (as text) to make ~prompt_tokens prompts."""
    bodies = []
    for p in workload.prompts(builder, n, prompt_tokens, seed=2):
        query = tokenizer.decode(p.input_ids[p.prefix_len : p.prefix_len + p.query_tokens]).strip()
        start = p.query_prefix_len
        document = tokenizer.decode(p.input_ids[start : start + p.document_tokens]).strip()
        bodies.append({"pairs": [{"query": query, "document": document}]})
    return bodies


def padding_efficiency(url: str) -> float | None:
    """Real over padded prompt tokens of every forward pass the server ran (warm-up and load), from its own
    counters on /metrics (`afrl_real_tokens_total`, `afrl_padded_tokens_total`); None when it ran none."""
    import httpx

    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("afrl_real_tokens_total", "afrl_padded_tokens_total"):
            values[name] = float(value)
    padded = values.get("afrl_padded_tokens_total", 0.0)
    return round(values["afrl_real_tokens_total"] / padded, 4) if padded else None


def in_process_ms(backend: Any, body: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    pair = (body["pairs"][0]["query"], body["pairs"][0]["document"])
    t = measure(lambda: backend.grade_logits(backend.builder.build_many([pair])), cfg.warmup + 2, max(cfg.repeats, 7))
    return t.to_dict(items=1)


def bench_service(
    cfg: BenchConfig, serve_model: str, serve_backend: str, dtype: str, in_process: Any, workdir: Path,
    other: tuple[str, str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Items 5 and 7: returns the per-mode load results, the batching speed-up, the HTTP overhead, the peak RSS.
    `other`: (model, backend, dtype) of the other backend (torch when onnx is served, and the reverse), served
    once more with batching on at the top concurrency only, for its peak RSS: both backends' RSS in one run."""
    bodies = request_bodies(in_process.builder, in_process.tokenizer, 64, cfg.service_prompt_tokens)
    modes = _serve_modes_interleaved(
        {"batching_on": cfg.service_max_batch, "batching_off": 1, CONTROL: 1}, serve_model, serve_backend, dtype,
        bodies, cfg, workdir, cfg.service_concurrency,
    )  # fmt: skip
    control = modes.pop(CONTROL)
    modes["batching_off"]["in_process_c1"] = in_process_ms(in_process, bodies[0], cfg)
    rss = {serve_backend: modes["batching_on"]["peak_rss_mb"]}
    top = max(cfg.service_concurrency)
    other_server = None
    if other is not None and other[1] != serve_backend:
        model, backend, other_dtype = other
        mode = f"{backend}_batching_on"
        other_server = _serve_modes_interleaved(
            {mode: cfg.service_max_batch}, model, backend, other_dtype, bodies, cfg, workdir, [top]
        )[mode]
        other_server.update(backend=backend, dtype=other_dtype)
        rss[backend] = other_server["peak_rss_mb"]

    def rps(mode: str, c: int) -> float:
        return float(next(r["throughput_rps"] for r in modes[mode]["levels"] if r["concurrency"] == c))

    off_c1 = next(r for r in modes["batching_off"]["levels"] if r["concurrency"] == 1)
    http_ms = off_c1["p50_ms"] - modes["batching_off"]["in_process_c1"]["median_s"] * 1000
    # The batch's own compute time: one full pass (top concurrency, or the batch cap), in process, no server; and
    # one pair's pass timed the same way. Their pairs/s ratio is the most batching can give this backend here: a
    # compute-bound scorer on few cores gains little from batching however well the batcher does its job.
    batch = in_process_batch(in_process, bodies[: min(top, cfg.service_max_batch)], cfg)
    single = in_process_batch(in_process, bodies[:1], cfg)
    ceiling = ratio(batch["per_s"], single["per_s"])
    on_top = next(r for r in modes["batching_on"]["levels"] if r["concurrency"] == top)
    levels = sorted(r["concurrency"] for r in modes["batching_on"]["levels"])
    by_level = {c: ratio(rps("batching_on", c), rps("batching_off", c)) for c in levels}
    control_rps = {r["concurrency"]: r["throughput_rps"] for r in control["levels"]}
    control_by_level = {c: ratio(control_rps[c], rps("batching_off", c)) for c in levels}
    speedup = by_level[top]
    return {
        "served_model": serve_model,
        "served_backend": serve_backend,
        "served_scorer": getattr(in_process, "scorer", None) and _scorer_name(in_process, dtype),
        "request": f"POST /score with one pair of about {cfg.service_prompt_tokens} tokens",
        "seconds_per_level": cfg.service_seconds * cfg.service_rounds,
        "rounds_per_level": cfg.service_rounds,
        "modes": modes,
        "top_concurrency": top,
        "batching_speedup_c32": speedup,
        "batching_ratio_by_concurrency": by_level,
        "batching_min_ratio": min(by_level.values()),
        "control": control,
        "control_ratio_by_concurrency": control_by_level,
        "batch_compute": batch,
        "single_pair_compute": single,
        "batching_ceiling_c32": ceiling,
        "batching_share_of_ceiling_c32": ratio(speedup, ceiling),
        "p99_over_batch_compute_c32": ratio(on_top["p99_ms"], batch["median_s"] * 1000),
        "http_overhead_ms_c1": round(http_ms, 2),
        "server_rss_mb": modes["batching_on"]["peak_rss_mb"],
        "other_server": other_server,
        "torch_server_rss_mb": rss.get("torch"),
        "onnx_server_rss_mb": rss.get("onnx"),
    }


def in_process_batch(backend: Any, bodies: list[dict[str, Any]], cfg: BenchConfig) -> dict[str, Any]:
    """Timing of one forward pass over the pairs of `bodies` (one per body) on the in-process backend."""
    prompts = backend.builder.build_many([(b["pairs"][0]["query"], b["pairs"][0]["document"]) for b in bodies])
    t = measure(lambda: backend.grade_logits(prompts), cfg.warmup + 1, max(cfg.repeats, 3))
    return t.to_dict(items=len(prompts))


def _serve_modes_interleaved(
    max_batch: dict[str, int], model: str, backend: str, dtype: str, bodies: list[dict[str, Any]], cfg: BenchConfig,
    workdir: Path, concurrency: Sequence[int],
) -> dict[str, Any]:  # fmt: skip
    """One server per mode (its `max_batch_pairs`), all up at once; at each concurrency level, `service_rounds`
    rounds of `service_seconds` each, the modes taking turns in alternating order. Per mode: start time, pooled
    levels, padding efficiency, peak RSS."""
    servers = {
        m: Server(model, backend, dtype, cfg.threads, b, workdir / f"server-{m}.log") for m, b in max_batch.items()
    }
    try:
        modes: dict[str, Any] = {}
        for mode, server in servers.items():
            started = time.perf_counter()
            server.wait_ready()
            modes[mode] = {"ready_s": round(time.perf_counter() - started, 1), "max_batch_pairs": max_batch[mode]}
            log.info("bench: server (%s, %s) ready at %s", backend, mode, server.url)
            asyncio.run(_load(server.url, bodies, 4, min(2.0, cfg.service_seconds)))  # warm-up
        rounds: dict[str, dict[int, list[dict[str, Any]]]] = {m: {} for m in servers}
        for c in concurrency:
            for r in range(cfg.service_rounds):
                for mode in list(servers) if r % 2 == 0 else list(reversed(servers)):
                    row = asyncio.run(_load(servers[mode].url, bodies, c, cfg.service_seconds))
                    rounds[mode].setdefault(c, []).append(row)
            for mode in servers:
                row = pool_rounds(rounds[mode][c])
                log.info("bench: %s, %s c=%d: %.1f req/s (rounds %s), p50 %.0f ms, p99 %.0f ms", backend, mode, c,
                         row["throughput_rps"], row["rounds_rps"], row["p50_ms"], row["p99_ms"])  # fmt: skip
                modes[mode].setdefault("levels", []).append(row)
        for mode, server in servers.items():
            modes[mode]["padding_efficiency"] = padding_efficiency(server.url)
            modes[mode]["peak_rss_mb"] = vm_hwm_mb(server.proc.pid)
        return modes
    finally:
        for server in servers.values():
            server.stop()


def _scorer_name(backend: Any, dtype: str) -> str:
    manifest = getattr(backend.scorer, "manifest", None)
    if manifest is not None and hasattr(manifest, "extra"):
        return f"onnx-{manifest.extra.get('preferred_scorer', 'fp32')}"
    return f"torch-{dtype}"
