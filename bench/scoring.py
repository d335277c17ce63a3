"""Items 1 and 2: answer-first against reason-first, and the scoring backends side by side.

Backends (all on the same prompts, token ids built once by the contract, so tokenisation is not timed):

* `torch-fp32`: what a user gets from transformers: `afrl.scorer.TorchScorer`, PyTorch eager execution (no
  `torch.compile`), transformers' default attention (SDPA), float32 weights;
* `torch-bf16`: the same with bfloat16 weights (emulated, so slow, on CPUs without AMX or AVX512-BF16);
* `onnx-fp32` and `onnx-int8`: `export.runtime.OnnxScorer` over the exported sliced scorer, float32 and
  dynamic INT8 (onnxruntime `quantize_dynamic`, VNNI kernels where the CPU has them).

Each backend's grades on the batch are compared with torch-fp32's, so a fast backend that changes answers shows.

Answer-first (item 1) is the torch-fp32 scoring pass: one forward pass, grade logits at the last prompt position.
Reason-first is the same model and batch asked to reason before grading: the prompt's instruction asks for the
explanation first, `generate` writes `explanation_tokens` tokens greedily (KV cache, `min_new_tokens` so every
row writes all of them), and the grade distribution is read from the logits of the next position. Both are
reported as pairs per second at batch 1 and at the full batch; the headline is the full batch, the like-for-like
throughput comparison (batched generation is the reason-first system's best case).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from afrl.contract import Prompt
from bench import workload
from bench.config import BenchConfig
from bench.timing import Timing, measure, ratio

log = logging.getLogger(__name__)

REASON_FIRST_INSTRUCTION = (
    "Judge how relevant the passage is to the search query. First write Intent, Evidence (a quote) and "
    "Reasoning, then give the grade on the last line: 3 dedicated to the query with the exact answer, 2 some "
    "answer, 1 related but no answer, 0 irrelevant."
)


@dataclass
class Backend:
    """A named scoring function over built prompts, with the number type it computes in."""

    name: str
    number_type: str  # fp32, bf16 or int8: picks the matching peak for the roofline
    runtime: str  # torch or onnxruntime
    score: Callable[[list[Prompt]], np.ndarray]
    scorer: Any  # the TorchScorer or OnnxScorer behind `score`
    providers: list[Any] | None = None  # onnxruntime providers (None: CPU)
    device: str = "cpu"  # torch device


def load_backends(cfg: BenchConfig, onnx_dir: Path | None) -> dict[str, Backend]:
    import torch

    from afrl.scorer import load_scorer

    out: dict[str, Backend] = {}
    for name, dtype in (("torch-fp32", torch.float32), ("torch-bf16", torch.bfloat16)):
        scorer = load_scorer(cfg.model, dtype=dtype, batch_size=cfg.batch)
        out[name] = Backend(name, name.split("-")[1], "torch", torch_score(scorer), scorer)
    if onnx_dir is not None:
        from export.runtime import OnnxScorer

        for variant in ("fp32", "int8"):
            onnx = OnnxScorer.from_dir(onnx_dir, threads=cfg.threads, variant=variant, batch_size=cfg.batch)
            out[f"onnx-{variant}"] = Backend(f"onnx-{variant}", variant, "onnxruntime", onnx_score(onnx), onnx)
    return out


def torch_score(scorer: Any) -> Callable[[list[Prompt]], np.ndarray]:
    def score(prompts: list[Prompt]) -> np.ndarray:
        return np.asarray(scorer.logits_for_prompts(prompts).numpy())

    return score


def onnx_score(scorer: Any) -> Callable[[list[Prompt]], np.ndarray]:
    def score(prompts: list[Prompt]) -> np.ndarray:
        return np.asarray(scorer.grade_logits(workload.ids(prompts)))

    return score


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Grade agreement and the largest probability change against the reference backend."""

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    p, q = softmax(reference.astype(np.float64)), softmax(other.astype(np.float64))
    return {
        "grade_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(p - q).max()),
    }


def bench_backends(
    cfg: BenchConfig, backends: dict[str, Backend], builder: Any, baseline: str = "torch-fp32"
) -> dict[str, Any]:
    """Item 2: pairs per second at batch 1 and batch `cfg.batch`, each as a ratio to the baseline (torch-fp32)."""
    batch = workload.prompts(builder, cfg.batch, cfg.prompt_tokens)
    single = batch[:1]
    rows: dict[str, Any] = {}
    timings: dict[str, dict[int, Timing]] = {}
    logits: dict[str, np.ndarray] = {}
    for name, be in backends.items():
        log.info("bench: %s at batch 1 and %d x %d tokens", name, cfg.batch, cfg.prompt_tokens)
        t1 = measure(partial(be.score, single), cfg.warmup + 1, max(cfg.repeats, 5), cfg.budget_s / 3)
        tb = measure(partial(be.score, batch), cfg.warmup, cfg.repeats, cfg.budget_s)
        timings[name] = {1: t1, cfg.batch: tb}
        logits[name] = tb.result
        rows[name] = {
            "runtime": be.runtime,
            "number_type": be.number_type,
            "batch_1": t1.to_dict(items=1),
            f"batch_{cfg.batch}": tb.to_dict(items=cfg.batch),
            "vs_baseline_on_batch": agreement(logits[baseline], logits[name]),
        }
    base = timings[baseline]
    for name, row in rows.items():
        row["speedup_b1"] = ratio(base[1].median_s, timings[name][1].median_s)
        row[f"speedup_b{cfg.batch}"] = ratio(base[cfg.batch].median_s, timings[name][cfg.batch].median_s)
    best = max(rows, key=lambda n: timings[n][cfg.batch].per_s(cfg.batch))
    return {
        "baseline": baseline,
        "batch": cfg.batch,
        "prompt_tokens": workload.real_tokens(batch) / len(batch),
        "backends": rows,
        "best_backend_b32": best,
        "best_backend_speedup_b32": rows[best][f"speedup_b{cfg.batch}"],
        "_timings": timings,
        "_batch": batch,
    }


def reason_first_logits(model: Any, prompts: list[Prompt], pad_id: int, grade_ids: list[int], tokens: int) -> Any:
    """Generate `tokens` tokens greedily (left-padded batch, KV cache), then the grade logits at the next step."""
    import torch

    from afrl.scorer import pad_batch

    ids, mask = pad_batch([p.input_ids for p in prompts], pad_id, "left")
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=tokens + 1,
            min_new_tokens=tokens + 1,  # an untrained model may stop early; a reason-first model writes it all
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
    return out.logits[-1][:, grade_ids].float().cpu()


def bench_answer_first(cfg: BenchConfig, backend: Backend, builder: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """Item 1, on torch-fp32: the scoring timings of item 2 against reason-first generation on same-length prompts."""
    scorer = backend.scorer
    rf_batch = workload.prompts(builder, cfg.batch, cfg.prompt_tokens, REASON_FIRST_INSTRUCTION, seed=0)

    def reason(ps: list[Prompt], tokens: int) -> Callable[[], Any]:
        return lambda: reason_first_logits(scorer.model, ps, scorer.pad_id, scorer.grade_ids, tokens)

    log.info("bench: reason-first generation, %d tokens, batch 1 and %d", cfg.explanation_tokens, cfg.batch)
    # Warm-up: a short generation over the same batch allocates the caches and picks the kernels.
    out: dict[str, Any] = {
        "model_backend": backend.name,
        "explanation_tokens": cfg.explanation_tokens,
        "reason_first_instruction": REASON_FIRST_INSTRUCTION,
        "answer_first_prompt_tokens": answer["prompt_tokens"],
        "reason_first_prompt_tokens": workload.real_tokens(rf_batch) / len(rf_batch),
    }
    for n, ps in ((1, rf_batch[:1]), (cfg.batch, rf_batch)):
        for _ in range(cfg.warmup):
            reason(ps, 2)()
        rf = measure(reason(ps, cfg.explanation_tokens), 0, cfg.repeats, cfg.budget_s)
        af = answer["_timings"][backend.name][n]
        out[f"batch_{n}"] = {
            "answer_first": af.to_dict(items=n),
            "reason_first": rf.to_dict(items=n),
            "speedup": ratio(rf.median_s, af.median_s),
        }
    out["answer_first_speedup"] = out[f"batch_{cfg.batch}"]["speedup"]
    out["answer_first_speedup_b1"] = out["batch_1"]["speedup"]
    return out
