"""Validate the CUDA and TensorRT execution providers on a machine with an NVIDIA GPU, and write a report.

Runs the exported scorer on CPU fp32 (the reference), CUDA fp32, CUDA fp16 (`scorer.fp16.onnx`, when exported)
and TensorRT fp16 (engine cache and shape profiles from `export.providers`), checks that onnxruntime really used
each provider (it silently falls back to CPU otherwise), compares probabilities and grades with the CPU
reference, times batches, and times greedy decoding on CUDA. Writes `gpu_report.json` and `gpu_report.md`.

It needs `onnxruntime-gpu` (the `gpu` extra, in its own environment: never together with `onnxruntime`), the
CUDA 12 / cuDNN 9 libraries and, for TensorRT, TensorRT 10. It has not been run in this repository's
development environment, which has no GPU. On a GPU machine:

    afrl export --model default --out runs/onnx --fp16
    python -m export.gpu_check --dir runs/onnx --report runs/gpu-check
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _time_batches(scorer: Any, rows: list[list[int]], repeats: int) -> dict[str, float]:
    scorer.grade_logits(rows)  # warm-up: TensorRT builds (or loads) its engine here
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.grade_logits(rows)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "pairs_per_s": len(rows) / min(times)}


def run_checks(folder: Path, batch: int, repeats: int, trt_cache: Path, decode_tokens: int) -> dict[str, Any]:
    import onnxruntime as ort

    from export.check_pairs import load_check_pairs
    from export.parity import compare
    from export.providers import provider_list, provider_names, require_providers
    from export.runtime import OnnxGenerator, OnnxScorer

    report: dict[str, Any] = {
        "folder": str(folder),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "batch": batch,
        "runs": {},
    }
    pairs = (load_check_pairs(None) * ((batch // 32) + 1))[:batch]
    cpu = OnnxScorer.from_dir(folder, providers=provider_list("cpu"), variant="fp32", batch_size=batch)
    rows = [p.input_ids for p in cpu.builder.build_many(pairs)]
    reference = cpu.grade_logits(rows)
    report["runs"]["cpu-fp32"] = {"ok": True, **_time_batches(cpu, rows, repeats)}
    manifest_scorers = cpu.manifest.extra.get("scorers", ["fp32"])
    # (run name, provider, graph); TensorRT builds its fp16 engine from the fp32 graph
    configs = [("cuda-fp32", "cuda", "fp32"), ("tensorrt-fp16", "tensorrt", "fp32")]
    if "fp16" in manifest_scorers:
        configs.insert(1, ("cuda-fp16", "cuda", "fp16"))
    for name, provider, variant in configs:
        entry: dict[str, Any] = {"provider": provider, "graph": variant}
        try:
            providers = provider_list(provider, cache_dir=trt_cache, fp16=True)
            entry["providers"] = provider_names(providers)
            scorer = OnnxScorer.from_dir(folder, providers=providers, variant=variant, batch_size=batch)
            require_providers(scorer.session, providers)
            logits = scorer.grade_logits(rows)
            entry.update(ok=True, **compare(reference, logits).to_dict(), **_time_batches(scorer, rows, repeats))
        except Exception as e:  # a report of what failed is the point of this script
            entry.update(ok=False, error=f"{type(e).__name__}: {e}")
        report["runs"][name] = entry
        log.info("%s: %s", name, entry)
    if (folder / "decoder" / "model.onnx").is_file():
        entry = {}
        try:
            providers = provider_list("cuda")
            generator = OnnxGenerator.from_dir(folder, providers=providers)
            require_providers(generator.session, providers)
            start = time.perf_counter()
            tokens = generator.generate(rows[0], max_new_tokens=decode_tokens)
            elapsed = time.perf_counter() - start
            entry = {"ok": True, "new_tokens": len(tokens), "seconds": elapsed, "tokens_per_s": len(tokens) / elapsed}
        except Exception as e:
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report["runs"]["decoder-cuda"] = entry
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU provider check: {report['folder']}",
        "",
        f"onnxruntime {report['onnxruntime']}; available: {', '.join(report['available_providers'])}; "
        f"batch {report['batch']}",
        "",
        "| run | ok | max abs prob diff vs CPU | grade agreement | median s/batch | pairs/s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        if name == "decoder-cuda":
            continue
        diff = f"{r['max_abs_prob_diff']:.2e}" if "max_abs_prob_diff" in r else "-"
        agree = f"{r['grade_agreement']:.3f}" if "grade_agreement" in r else "-"
        median = f"{r['median_s']:.4f}" if "median_s" in r else "-"
        rate = f"{r['pairs_per_s']:.1f}" if "pairs_per_s" in r else "-"
        lines.append(f"| {name} | {r['ok']} | {diff} | {agree} | {median} | {rate} | {r.get('error', '')[:120]} |")
    dec = report["runs"].get("decoder-cuda")
    if dec:
        lines += ["", f"Decoder on CUDA: {json.dumps(dec)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="an `afrl export` folder")
    parser.add_argument("--report", type=Path, default=Path("gpu-check"), help="folder for the report files")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--trt-cache", type=Path, default=Path("~/.cache/afrl/trt-engines"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_checks(args.dir, args.batch, args.repeats, args.trt_cache.expanduser(), args.decode_tokens)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.report / "gpu_report.md").write_text(markdown(report))
    log.info("wrote %s", args.report / "gpu_report.md")
    gpu_runs = [r for name, r in report["runs"].items() if name != "cpu-fp32"]
    return 0 if gpu_runs and all(r["ok"] for r in gpu_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
