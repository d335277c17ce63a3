"""One benchmark run: prepare the exports, run items 1-10 in order, and collect one JSON-ready dict.

When every item that needs the exports and the loaded backends (1-7) is skipped, neither is prepared: `--skip`
of those leaves a run of `models` and `rerank100` only, which load their own models.

An item that fails is recorded with its error (and its headline keys set to null) and the others still run, so
one broken piece does not hide the rest; the command then exits non-zero. Nothing here compares a figure with
its target to decide success: targets are printed next to the figures, for the reader.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench import machine
from bench.config import BenchConfig

log = logging.getLogger(__name__)

SCHEMA = 1

# Headline key -> (item that produces it, comparison, target); None where the issue sets no target.
HEADLINES: dict[str, tuple[str, str | None, float | None]] = {
    "answer_first_speedup": ("answer_first", ">=", 20.0),
    "best_backend_speedup_b32": ("backends", ">=", 3.0),
    "roofline_fraction": ("roofline", ">=", 0.4),
    "prefix_reuse_speedup": ("prefix", ">=", 1.5),
    "batching_speedup_c32": ("service", ">=", 1.5),
    "batching_min_ratio": ("service", ">=", 1.0),
    "p99_over_batch_compute_c32": ("service", "<=", 2.0),
    "batching_ceiling_c32": ("service", None, None),
    "batching_share_of_ceiling_c32": ("service", None, None),
    "http_overhead_ms_c1": ("service", None, None),
    "qwen3_0p6b_pairs_per_s": ("qwen3", None, None),
    "server_rss_mb": ("service", "<=", 800.0),
    "torch_server_rss_mb": ("service", "<=", 800.0),
    "onnx_server_rss_mb": ("service", "<=", 800.0),
    "default_speedup_vs_previous": ("models", ">=", 5.0),
    "rerank100_p50_s": ("rerank100", "<=", 2.0),
    "explain_well_formed": ("explain", ">=", 0.9),
    "explain_onnx_total_s_p50": ("explain", None, None),
}
CORE_ITEMS = ("backends", "answer_first", "roofline", "prefix", "service", "qwen3")
"""The items that share the ONNX exports and the torch backends of `--model` loaded at the start."""
ITEMS = (*CORE_ITEMS, "models", "rerank100", "explain")


def target_met(value: float | None, op: str | None, target: float | None) -> bool | None:
    if value is None or op is None or target is None:
        return None
    return value >= target if op == ">=" else value <= target


class Run:
    def __init__(self, cfg: BenchConfig, command: str):
        self.cfg = cfg
        self.items: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.result: dict[str, Any] = {
            "schema": SCHEMA,
            "kind": "cpu",
            "command": command,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": cfg.model,
            "quick": cfg.quick,
            "machine": machine.describe(cfg.threads),
            "config": cfg.to_dict(),
        }

    def item(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if name in self.cfg.skip:
            self.items[name] = {"skipped": True}
            return None
        log.info("bench: item %s ...", name)
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # recorded and reported; the remaining items still run
            log.error("bench: item %s failed: %s\n%s", name, e, traceback.format_exc())
            self.errors[name] = f"{type(e).__name__}: {e}"
            self.items[name] = {"error": self.errors[name]}
            return None
        out["item_seconds"] = round(time.perf_counter() - start, 1)
        self.items[name] = {k: v for k, v in out.items() if not k.startswith("_")}
        log.info("bench: item %s done in %.0f s", name, out["item_seconds"])
        return out

    def finish(self, total_s: float) -> dict[str, Any]:
        r = self.result
        r["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        r["total_seconds"] = round(total_s, 1)
        for key, (item, op, target) in HEADLINES.items():
            value = self.items.get(item, {}).get(key)
            r[key] = value
            r.setdefault("targets", {})[key] = {
                "comparison": op,
                "target": target,
                "met": target_met(value, op, target),
            }
        r["items"] = self.items
        r["errors"] = self.errors
        return r


def run(cfg: BenchConfig, command: str = "afrl bench") -> dict[str, Any]:
    import torch

    from bench import models, rerank
    from bench.prepare import default_cache_dir

    torch.set_num_threads(cfg.threads)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would flood the log
    started = time.perf_counter()
    run = Run(cfg, command)
    cache = Path(cfg.cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)

    if all(name in cfg.skip for name in CORE_ITEMS):
        run.items["prepare"] = {"skipped": True, "reason": "every item that needs the exports is skipped"}
        run.items.update({name: {"skipped": True} for name in CORE_ITEMS})
    else:
        core_items(run, cfg, cache)
    gc.collect()  # the backends of items 1-7 are gone; items 8 and 9 load their own models
    run.item("models", lambda: models.bench_models(cfg))
    run.item("rerank100", lambda: rerank.bench_rerank(cfg, cache))
    run.item("explain", lambda: explain_item(cfg, cache))
    return run.finish(time.perf_counter() - started)


def explain_item(cfg: BenchConfig, cache: Path) -> dict[str, Any]:
    """Item 10 on the torch backend and the model's ONNX export (the one items 1-7 use, built once)."""
    from bench.explain import bench_explain
    from bench.prepare import onnx_export

    return bench_explain(cfg, onnx_export(cfg.model, cache, cfg.threads))


def core_items(run: Run, cfg: BenchConfig, cache: Path) -> None:
    """Items 1-7: the exports of `--model`, its backends loaded once, then each item in turn."""
    from afrl.prefix_lm import is_prefix_lm
    from afrl.scorer import attention_implementation
    from bench import prefix, roofline, scoring, service_load
    from bench.prepare import onnx_export, qwen3_export

    prep = run.item("prepare", lambda: {"onnx_dir": str(onnx_export(cfg.model, cache, cfg.threads))})
    onnx_dir = Path(prep["onnx_dir"]) if prep else None
    if onnx_dir is not None:
        from afrl.manifest import Manifest

        run.items["prepare"]["int8_parity"] = Manifest.read(onnx_dir).parity.get("int8")
    backends = scoring.load_backends(cfg, onnx_dir)
    fp32 = backends["torch-fp32"]
    run.result["torch_attention"] = attention_implementation(fp32.scorer.model)
    builder = fp32.scorer.builder

    answer = run.item("backends", lambda: scoring.bench_backends(cfg, backends, builder))
    if answer is not None:
        run.item("answer_first", lambda: scoring.bench_answer_first(cfg, fp32, builder, answer))
        run.item("roofline", lambda: roofline.bench_roofline(cfg, backends, answer, fp32.scorer.model))
    else:
        for name in ("answer_first", "roofline"):
            if name in cfg.skip:
                run.items[name] = {"skipped": True}
            else:
                run.errors.setdefault(name, "needs the backends item")
                run.items[name] = {"error": run.errors[name]}
    best = answer["best_backend_b32"] if answer else "torch-fp32"
    if is_prefix_lm(fp32.scorer.model) and "prefix" not in cfg.skip:
        run.items["prefix"] = {"skipped": True, "reason": prefix.NOT_FOR_PREFIX_LM}
    else:
        run.item("prefix", lambda: prefix.bench_prefix(cfg, fp32.scorer))

    # Free what the service and the Qwen3 subprocess do not need: they run in their own processes.
    for name in [n for n in backends if n != "torch-fp32"]:
        del backends[name]
    gc.collect()

    def service() -> dict[str, Any]:
        from service.backends import load_backend
        from service.settings import Settings

        on_onnx = best.startswith("onnx-") and onnx_dir is not None
        model = str(onnx_dir) if on_onnx else cfg.model
        kind: Literal["torch", "onnx"] = "onnx" if on_onnx else "torch"
        dtype: Literal["bf16", "fp32"] = "bf16" if best == "torch-bf16" else "fp32"
        in_process = load_backend(Settings(model=model, backend=kind, threads=cfg.threads, dtype=dtype, device="cpu"))
        # The other backend too, for its RSS: torch in its own dtype choice, or the INT8 ONNX scorer the
        # service's onnx backend loads (`fp32` names no ONNX file; the export's manifest picks the scorer).
        other = (cfg.model, "torch", "auto") if on_onnx else (str(onnx_dir), "onnx", "fp32") if onnx_dir else None
        return service_load.bench_service(cfg, model, kind, dtype, in_process, cache, other=other)

    run.item("service", service)

    def qwen3() -> dict[str, Any]:
        from bench.prod import bench_qwen3

        folder = qwen3_export(cache, cfg.threads, shrunk=cfg.quick) if best.startswith("onnx-") else None
        return bench_qwen3(cfg, folder, best)

    run.item("qwen3", qwen3)
