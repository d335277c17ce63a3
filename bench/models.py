"""Item 8: the default model against the previous default (and any other `--compare` model), same workload.

Every model is loaded the way `afrl serve --model SPEC` loads it (`TorchBackend.from_spec`, `--dtype auto`: bf16
where the CPU has AMX or AVX512-BF16, else fp32; an adapter with `extra.num_layers` in its manifest is cut to
those layers by `afrl.models.load_model`) and scores the same texts: one query with `rerank_documents` passages
of MS MARCO length (`document_chars`), the shape of a /rerank request. Each model builds its own prompts under its
own contract (instruction, truncation), so prompt lengths may differ a little; the table gives them. Prompts are
built once (tokenisation is not timed) and scored by the backend's plain path (`grade_logits`) in passes of the
service's default `max_batch_pairs`, as the batcher cuts them; the prefix-reuse path and the HTTP server are
item 9's business. Models are measured one after the other, each loaded only while it is measured.

The ratios are `--model`'s pairs per second over each compared model's; the first compared model's ratio is the
headline `default_speedup_vs_previous`.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import workload
from bench.config import BenchConfig
from bench.timing import measure, ratio

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def display_path(path: Path) -> str:
    """A folder relative to the repository when it is inside it (as the README and the issue name them)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def service_dtype() -> str:
    """What `afrl serve --dtype auto` picks on this machine: bf16 or fp32."""
    import torch

    from service.backends.torch_backend import resolve_dtype

    return "bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32"


def measure_model(cfg: BenchConfig, spec: str, pairs: list[tuple[str, str]], pass_size: int) -> dict[str, Any]:
    """Load `spec` as the service does, then time the plain scoring of `pairs` in passes of `pass_size`."""
    from afrl.models import resolve
    from service.backends.torch_backend import TorchBackend

    started = time.perf_counter()
    backend = TorchBackend.from_spec(spec, dtype="auto", threads=cfg.threads, device="cpu")  # a CPU benchmark
    load_s = time.perf_counter() - started
    model = backend.model
    prompts = backend.builder.build_many(pairs)
    passes = [prompts[i : i + pass_size] for i in range(0, len(prompts), pass_size)]

    def score() -> np.ndarray:
        return np.concatenate([backend.grade_logits(p) for p in passes])

    log.info("bench: models: %s, %d layers, %d documents", spec, model.config.num_hidden_layers, len(prompts))
    t = measure(score, cfg.warmup, cfg.repeats, cfg.budget_s)
    if not np.isfinite(t.result).all():
        raise RuntimeError(f"{spec}: the grade logits are not all finite")
    row = {
        "spec": spec,
        "folder": display_path(resolve(spec)),
        "layers": int(model.config.num_hidden_layers),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "prompt_tokens_mean": round(workload.real_tokens(prompts) / len(prompts), 1),
        "documents_truncated": sum(p.truncated for p in prompts),
        "load_s": round(load_s, 1),
        "timing": t.to_dict(items=len(prompts)),
        "pairs_per_s": t.per_s(len(prompts)),
    }
    return row  # the backend goes with this frame: one model in memory at a time


def bench_models(cfg: BenchConfig) -> dict[str, Any]:
    from afrl.hardware import cpu_has_native_bf16
    from service.settings import Settings

    if not cfg.compare:
        raise ValueError("the models item needs at least one model to compare with (--compare SPEC)")
    pass_size = Settings.model_fields["max_batch_pairs"].default
    pairs = workload.rerank_pairs(cfg.rerank_documents, cfg.document_chars)
    rows = []
    for spec in (cfg.model, *cfg.compare):
        rows.append(measure_model(cfg, spec, pairs, pass_size))
        gc.collect()
    main, compared = rows[0], rows[1:]
    for row in compared:
        row["model_speedup"] = ratio(main["pairs_per_s"], row["pairs_per_s"])
    for row in rows:
        row["pairs_per_s"] = round(row["pairs_per_s"], 3)
    lengths = [len(d) for _, d in pairs]
    return {
        "backend": "service torch backend (TorchBackend.from_spec, --dtype auto), plain path (grade_logits)",
        "dtype": service_dtype(),
        "native_bf16": cpu_has_native_bf16(),
        "query": workload.RERANK_QUERY,
        "documents": len(pairs),
        "document_chars": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        "pass_size": pass_size,
        "models": rows,
        "default_speedup_vs_previous": compared[0]["model_speedup"],
    }
