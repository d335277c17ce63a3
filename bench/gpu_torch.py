"""The GPU benchmark that runs on torch + transformers alone (no onnxruntime-gpu, no TensorRT, no install step).

    PYTHONPATH=. python -m bench.gpu_torch --json bench/results/gpu_torch.json --markdown bench/results/gpu_torch.md
    python -m bench.gpu_torch --device cpu --quick --model DIR --json /tmp/g.json   # the same code on a CPU (tests)

Why a second GPU script: `bench/gpu.py` measures onnxruntime's CUDA and TensorRT providers and needs
onnxruntime-gpu, which the GPU machine lent to this project does not have (it has torch and transformers, and no
way to install more). This script is what the service's torch backend does on a GPU (service/backends/cuda.py):
weights in bf16 where the GPU has it, SDPA attention, batches by token budget, and it only imports torch,
transformers, numpy and this repository.

Measured, for the Qwen3-0.6B architecture (random weights, `export.prod_size.QWEN3_06B`; speed does not depend on
the weights) and for the shipped default student (`--model`, default `default`):
* grade logits (`afrl.scorer.grade_logits`, the function the service scores with) of batches of pairs of 256
  tokens, for each batch size in `--batches` (a batch of B pairs is a token budget of 256 x B), timed with CUDA
  synchronisation: pairs/s, and the p50 / p99 latency of one batch;
* memory: `torch.cuda.max_memory_allocated` per model, and the GPU's used / total memory from `nvidia-smi`.
Headline: `qwen3_0p6b_pairs_per_s`, the best pairs/s over the batch sizes (issue 17's target: >= 2,000 on one
H100 / H200), and `default_pairs_per_s` likewise.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENS = 256
QWEN3_TARGET = 2000.0


def nvidia_smi() -> dict[str, Any] | None:
    """Used and total memory (MiB) and the name of GPU 0 from nvidia-smi; None where it is missing."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-gpu=name,memory.used,memory.total,driver_version"
    out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, used, total, driver = [f.strip() for f in out.stdout.strip().splitlines()[0].split(",")]
    return {"name": name, "memory_used_mib": float(used), "memory_total_mib": float(total), "driver": driver}


def bench_model(
    model: Any, grade_ids: list[int], vocab: int, device: str, batches: list[int], repeats: int, budget_s: float
) -> dict[str, Any]:
    """pairs/s and batch latency at each batch size of `TOKENS`-token pairs (random ids, no padding)."""
    import torch

    from afrl.scorer import attention_implementation, grade_logits
    from bench.timing import percentile

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        ids = torch.randint(10, vocab - 1, (batch, TOKENS), generator=generator).to(device)
        mask = torch.ones_like(ids)
        try:
            with torch.inference_mode():
                for _ in range(2):  # warm-up: kernels picked, caches allocated
                    grade_logits(model, ids, mask, grade_ids)
                sync()
                times: list[float] = []
                while len(times) < repeats and (len(times) < 3 or sum(times) < budget_s):
                    start = time.perf_counter()
                    grade_logits(model, ids, mask, grade_ids)
                    sync()
                    times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError as e:
            log.warning("batch %d does not fit: %s", batch, e)
            rows.append({"batch": batch, "tokens": TOKENS, "error": "out of memory"})
            torch.cuda.empty_cache()
            break
        p50 = percentile(times, 50)
        rows.append(
            {
                "batch": batch,
                "tokens": TOKENS,
                "repeats": len(times),
                "pairs_per_s": round(batch / p50, 1),
                "p50_ms": round(p50 * 1000, 2),
                "p99_ms": round(percentile(times, 99) * 1000, 2),
            }
        )
        log.info("batch %d x %d: %.1f pairs/s, p50 %.1f ms", batch, TOKENS, batch / p50, p50 * 1000)
    ok: list[float] = [float(r["pairs_per_s"]) for r in rows if "pairs_per_s" in r]
    param = next(model.parameters())
    return {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "attention": attention_implementation(model),
        "batches": rows,
        "best_pairs_per_s": max(ok, default=None),
        "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }


def place(model: Any, device: str, dtype: Any) -> Any:
    model.to(dtype=dtype)
    if device == "cuda":
        from service.backends.cuda import place_on_cuda

        place_on_cuda(model)
    return model.eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from afrl.scorer import load_scorer
    from bench.prepare import build_qwen3, qwen3_config
    from service.backends.torch_backend import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "kind": "gpu_torch",
        "command": "python -m bench.gpu_torch " + " ".join(args.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "tokens_per_pair": TOKENS,
        "models": {},
    }
    batches = sorted(set(args.batches))
    qwen, tok = build_qwen3(qwen3_config(shrunk=args.quick))
    place(qwen, device, dtype)
    grade_ids = [tok.convert_tokens_to_ids(str(g)) for g in range(4)]
    result["models"]["qwen3-0.6b-architecture"] = {
        "what": "random Qwen3-0.6B architecture" + (" (shrunk: --quick)" if args.quick else ""),
        **bench_model(qwen, grade_ids, qwen.config.vocab_size, device, batches, args.repeats, args.budget_s),
    }
    del qwen
    if device == "cuda":
        torch.cuda.empty_cache()
    scorer = load_scorer(args.model, dtype=dtype)
    student = place(scorer.model, device, dtype)
    vocab = len(scorer.tokenizer)
    result["models"]["default"] = {
        "what": f"`{args.model}`",
        **bench_model(student, list(scorer.grade_ids), vocab, device, batches, args.repeats, args.budget_s),
    }
    result["nvidia_smi"] = nvidia_smi()
    result["qwen3_0p6b_pairs_per_s"] = result["models"]["qwen3-0.6b-architecture"]["best_pairs_per_s"]
    result["default_pairs_per_s"] = result["models"]["default"]["best_pairs_per_s"]
    result["targets"] = {"qwen3_0p6b_pairs_per_s": {"target": QWEN3_TARGET, "on": "one H100 / H200"}}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# GPU benchmark on torch alone",
        "",
        f"Generated by `{result['command']}` ({result['date']}, {result['seconds']} s); do not edit by hand.",
        "",
        f"Device: {m['device']} ({m['gpu'] or 'no GPU'}), torch {m['torch']} (CUDA {m['cuda']}), "
        f"transformers {m['transformers']}. Pairs of {result['tokens_per_pair']} tokens, random ids, grade "
        "logits at the last position (`afrl.scorer.grade_logits`), one batch timed (with CUDA synchronisation on a "
        "GPU).",
        "",
        "| model | parameters (M) | dtype | attention | batch | pairs/s | p50 ms | p99 ms | repeats |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["models"].values():
        for r in entry["batches"]:
            cells = [
                r.get("pairs_per_s", r.get("error")),
                r.get("p50_ms", ""),
                r.get("p99_ms", ""),
                r.get("repeats", ""),
            ]
            head = [entry["what"], entry["parameters_m"], entry["dtype"], entry["attention"], r["batch"]]
            lines.append("| " + " | ".join(str(c) for c in [*head, *cells]) + " |")
    lines += ["", "| figure | measured | target |", "|---|---|---|"]
    met = result["qwen3_0p6b_pairs_per_s"]
    lines.append(f"| Qwen3-0.6B architecture, best pairs/s | {met} | >= {QWEN3_TARGET:,.0f} on one H100 / H200 |")
    lines.append(f"| default student, best pairs/s | {result['default_pairs_per_s']} | none set |")
    memory = [f"{n}: {e['max_memory_allocated_mib']} MiB" for n, e in result["models"].items()]
    smi = result["nvidia_smi"]
    if m["device"] == "cuda":
        lines += ["", "Peak memory allocated by torch: " + ", ".join(memory) + "."]
    if smi:
        lines.append(f"nvidia-smi at the end: {smi['memory_used_mib']:.0f} of {smi['memory_total_mib']:.0f} MiB used.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="the AFRL model measured beside the Qwen3 architecture")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128, 512], help="pairs per batch")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per size (at least 3)")
    parser.add_argument("--budget-s", type=float, default=10.0, help="stop timing a size after this many seconds")
    parser.add_argument("--quick", action="store_true", help="a two-layer narrow Qwen3 (tests, CPU smoke runs)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/gpu_torch.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except ValueError as e:  # --device cuda without a GPU, among others: say so, measure nothing
        print(f"bench.gpu_torch: {e}", file=sys.stderr)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(render(result))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
