"""Item 8: the benchmark on an NVIDIA GPU, with onnxruntime's CUDA and TensorRT execution providers in fp16.

    pip install -e '.[gpu]'    # onnxruntime-gpu, in its own environment (never together with onnxruntime)
    python -m bench.gpu --model default-base --json bench/results/gpu.json --markdown BENCHMARKS.md

It writes `bench/results/gpu.json` beside the CPU results and re-renders BENCHMARKS.md with a GPU section. Every
onnxruntime session is checked with `export.providers.require_providers`: onnxruntime silently falls back to the
CPU when a GPU provider cannot start, and a CPU number must never be reported as a GPU one. Without a GPU (or
without onnxruntime-gpu) it stops with exit status 2 and measures nothing.

Items (the same code as the CPU run, with other backends):
1. answer-first against reason-first: torch fp16 on CUDA, when this environment's torch has CUDA (else skipped);
2. backends at batch 1 and batch 32 x ~200 tokens: onnx fp32 on CUDA, onnx fp16 on CUDA (`scorer.fp16.onnx`),
   TensorRT fp16 (engine built from `scorer.onnx`, cached), and torch fp32 / fp16 on CUDA when available; the
   baseline is torch fp32 on CUDA, or onnx fp32 on CUDA without a CUDA torch;
3. roofline: the best backend against the fp16 (or fp32) matmul peak measured through the same runtime and device;
4. prefix reuse: the service's torch backend on CUDA (fp16);
6. the Qwen3-0.6B-architecture scorer at 32 x 256 tokens on TensorRT fp16.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.config import BenchConfig
from bench.runner import Run
from bench.scoring import Backend, onnx_score, torch_score

log = logging.getLogger(__name__)

EXIT_NO_GPU = 2


def gpu_available() -> str | None:
    """None when CUDA and TensorRT providers can be asked for; else the reason they cannot."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return f"onnxruntime offers {available}: install onnxruntime-gpu (extra `gpu`) on a machine with an NVIDIA GPU"
    return None


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        return out.stdout.strip() or "unknown NVIDIA GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown NVIDIA GPU"


def onnx_backends(cfg: BenchConfig, folder: Path, trt_cache: Path) -> dict[str, Backend]:
    from export.providers import provider_list, require_providers
    from export.runtime import OnnxScorer

    specs = [
        ("onnx-cuda-fp32", "fp32", "fp32", provider_list("cuda")),
        ("onnx-cuda-fp16", "fp16", "fp16", provider_list("cuda")),
        ("onnx-tensorrt-fp16", "fp32", "fp16", provider_list("tensorrt", cache_dir=trt_cache, fp16=True)),
    ]
    out = {}
    for name, variant, number_type, providers in specs:
        scorer = OnnxScorer.from_dir(folder, providers=providers, variant=variant, batch_size=cfg.batch)
        require_providers(scorer.session, providers)
        out[name] = Backend(name, number_type, "onnxruntime", onnx_score(scorer), scorer, providers=providers)
    return out


def torch_backends(cfg: BenchConfig) -> dict[str, Backend]:
    import torch

    from afrl.scorer import load_scorer

    out = {}
    for name, dtype in (("torch-cuda-fp32", torch.float32), ("torch-cuda-fp16", torch.float16)):
        scorer = load_scorer(cfg.model, dtype=dtype, batch_size=cfg.batch)
        scorer.model.to("cuda")
        out[name] = Backend(name, name.rsplit("-", 1)[1], "torch", torch_score(scorer), scorer, device="cuda")
    return out


def qwen3_trt(cfg: BenchConfig, folder: Path, trt_cache: Path) -> dict[str, Any]:
    import numpy as np

    from bench.prepare import qwen3_config
    from bench.timing import measure
    from export.providers import provider_list, require_providers
    from export.runtime import OnnxScorer

    providers = provider_list("tensorrt", cache_dir=trt_cache, fp16=True,
                              profiles={"opt": (cfg.qwen3_batch, cfg.qwen3_tokens)})  # fmt: skip
    start = time.perf_counter()
    scorer = OnnxScorer.from_dir(folder, providers=providers, variant="fp32", batch_size=cfg.qwen3_batch)
    require_providers(scorer.session, providers)
    load_s = time.perf_counter() - start
    ids = np.random.default_rng(0).integers(10, 390, size=(cfg.qwen3_batch, cfg.qwen3_tokens)).tolist()
    t = measure(lambda: scorer.grade_logits(ids), cfg.warmup + 1, cfg.repeats, cfg.budget_s)  # +1: engine build
    pairs_per_s = round(t.per_s(cfg.qwen3_batch), 2)
    return {
        "model": "random Qwen3-0.6B architecture",
        "config": qwen3_config(cfg.quick),
        "backend": "onnx-tensorrt-fp16",
        "batch": cfg.qwen3_batch,
        "tokens": cfg.qwen3_tokens,
        "threads": None,
        "load_s": round(load_s, 1),
        **t.to_dict(items=cfg.qwen3_batch),
        "pairs_per_s": pairs_per_s,
        "peak_rss_mb": None,  # host memory is not the figure of interest on a GPU
        "qwen3_0p6b_pairs_per_s": pairs_per_s,
    }


def run(cfg: BenchConfig, command: str) -> dict[str, Any]:
    from bench import prefix, roofline, scoring
    from bench.prepare import default_cache_dir, onnx_export, qwen3_export

    cache = Path(cfg.cache_dir or default_cache_dir())
    trt_cache = cache / "trt-engines"
    started = time.perf_counter()
    bench = Run(cfg, command)
    bench.result["kind"] = "gpu"
    bench.result["machine"].update(gpu_name=gpu_name(), torch_cuda=torch_cuda())
    folder = onnx_export(cfg.model, cache, cfg.threads, fp16=True)
    backends = onnx_backends(cfg, folder, trt_cache)
    has_torch = torch_cuda()
    if has_torch:
        backends.update(torch_backends(cfg))
    else:
        for item in ("answer_first", "prefix"):
            bench.items[item] = {"skipped": True, "reason": "this environment's torch has no CUDA"}
    baseline = "torch-cuda-fp32" if has_torch else "onnx-cuda-fp32"
    # The builder (prompt ids) is the contract's, whichever backend holds it; the roofline needs the torch config.
    builder = next(iter(backends.values())).scorer.builder
    answer = bench.item("backends", lambda: scoring.bench_backends(cfg, backends, builder, baseline))
    if answer is not None and has_torch:
        fp16 = backends["torch-cuda-fp16"]
        bench.item("answer_first", lambda: scoring.bench_answer_first(cfg, fp16, builder, answer))
        bench.item("prefix", lambda: prefix.bench_prefix(cfg, fp16.scorer))
    if answer is not None:
        from afrl.models import load_model

        config_model = load_model(cfg.model)[0]
        bench.item("roofline", lambda: roofline.bench_roofline(cfg, backends, answer, config_model))
    bench.item("qwen3", lambda: qwen3_trt(cfg, qwen3_export(cache, cfg.threads, cfg.quick), trt_cache))
    for item in ("service", "models", "rerank100"):
        bench.items[item] = {"skipped": True, "reason": "the GPU script covers items 1-4 and 6"}
    return bench.finish(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="re-render this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--cpu-json", type=Path, default=None, help="the CPU results (default: cpu.json beside)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = gpu_available()
    if reason is not None:
        print(f"bench.gpu: no GPU to measure: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    kw: dict[str, Any] = {"model": args.model, "cache_dir": args.cache_dir}
    cfg = BenchConfig.quick_for(**kw) if args.quick else BenchConfig(**kw)
    command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run(cfg, command)
    result["machine"]["cpu"] = machine.cpu_model()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.markdown is not None:
        from bench.report import write_markdown

        cpu_json = args.cpu_json or args.json.with_name("cpu.json")
        write_markdown(cpu_json, args.markdown, args.json)
        print(f"wrote {args.markdown}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
