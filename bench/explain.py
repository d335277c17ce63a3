"""Item 10: `/explain` on each backend of `--model`, side by side: how long an explanation takes and what it is.

The torch backend (`--dtype auto`, as `afrl serve` loads it) and the ONNX backend of the model's export (the one
the other items use, with its decoder: optimum's for a causal LM, export/prefix_decoder.py's for a prefix LM) each
explain the same pairs, one after the other, in this process, through `Backend.explain` (what the route streams,
without HTTP). Per backend: the time to the score event (one prompt pass), to the first text, to the end; tokens
per second of the written part; the share of explanations that parse as the contract asks
(`afrl.contract.parse_completion`: labels in order, the Evidence a quote of the passage, the Verdict equal to the
first token); and the share whose text equals the torch backend's (both decode greedily through
`afrl.explanation_constraint.decode_explanation`, so they differ only by numerical noise). The ONNX decoder is
loaded before the timed explanations (the service loads it on the first /explain).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.config import BenchConfig
from bench.timing import percentile

log = logging.getLogger(__name__)


def _explain_once(backend: Any, prompt: Any, max_new_tokens: int) -> dict[str, Any]:
    from service.backends.base import ScoreStep, StreamEnd, TextDelta

    started = time.perf_counter()
    score_s = first_text_s = None
    text, tokens, reason = "", 0, None
    for event in backend.explain(prompt, max_new_tokens, threading.Event()):
        now = time.perf_counter() - started
        if isinstance(event, ScoreStep):
            score_s = now
        elif isinstance(event, TextDelta):
            tokens += event.tokens
            if event.text and first_text_s is None:
                first_text_s = now
            text += event.text
        elif isinstance(event, StreamEnd):
            reason = event.reason
    total = time.perf_counter() - started
    return {"score_s": score_s, "first_text_s": first_text_s, "total_s": total, "tokens": tokens, "text": text,
            "reason": reason}  # fmt: skip


def bench_explain(cfg: BenchConfig, onnx_dir: Path | None) -> dict[str, Any]:
    from afrl.contract import parse_completion
    from bench.models import service_dtype
    from service.backends.onnx_backend import OnnxBackend
    from service.backends.torch_backend import TorchBackend
    from service.settings import Settings

    max_new_tokens = Settings.model_fields["max_new_tokens"].default
    dtype = service_dtype()
    backends: dict[str, Any] = {
        f"torch-{dtype}": TorchBackend.from_spec(cfg.model, dtype=dtype, threads=cfg.threads, device="cpu")
    }
    if onnx_dir is not None:
        onnx_backend = OnnxBackend.from_dir(str(onnx_dir), providers="cpu", threads=cfg.threads)
        if onnx_backend.can_explain and onnx_backend.generator is not None:  # loaded here, not while timed
            backends["onnx"] = onnx_backend
    pairs = workload.rerank_pairs(cfg.explain_pairs, cfg.document_chars, seed=7)
    builder = backends[f"torch-{dtype}"].builder
    prompts = [builder.build(q, d) for q, d in pairs]
    rows: dict[str, Any] = {}
    reference: list[str] | None = None
    for name, backend in backends.items():
        for _ in range(cfg.warmup):
            _explain_once(backend, prompts[0], max_new_tokens)
        runs = [_explain_once(backend, p, max_new_tokens) for p in prompts]
        texts = [r["text"] for r in runs]
        reference = texts if reference is None else reference
        parsed = [parse_completion(t, d) for t, (_, d) in zip(texts, pairs, strict=True)]
        written = [(r["total_s"] - r["score_s"], r["tokens"]) for r in runs]
        rows[name] = {
            "score_ms_p50": round(1000 * percentile([r["score_s"] for r in runs], 50), 1),
            "first_text_ms_p50": round(1000 * percentile([r["first_text_s"] or r["total_s"] for r in runs], 50), 1),
            "total_s_p50": round(percentile([r["total_s"] for r in runs], 50), 3),
            "total_s_max": round(max(r["total_s"] for r in runs), 3),
            "tokens_mean": round(sum(r["tokens"] for r in runs) / len(runs), 1),
            "tokens_per_s": round(sum(n for _, n in written) / max(sum(s for s, _ in written), 1e-9), 1),
            "well_formed": sum(p.consistent for p in parsed) / len(parsed),
            "same_text_as_first": sum(a == b for a, b in zip(texts, reference, strict=True)) / len(texts),
            "end_reasons": sorted({str(r["reason"]) for r in runs}),
            "example": texts[0],
        }
        log.info("bench: explain on %s: %s", name, {k: v for k, v in rows[name].items() if k != "example"})
    onnx = rows.get("onnx")
    return {
        "explain_well_formed": min(r["well_formed"] for r in rows.values()),
        "explain_onnx_total_s_p50": onnx["total_s_p50"] if onnx else None,
        "backends": rows,
        "pairs": len(prompts),
        "max_new_tokens": max_new_tokens,
        "first_backend": next(iter(rows)),
        "prompt_tokens_mean": round(sum(len(p.input_ids) for p in prompts) / len(prompts), 1),
    }
