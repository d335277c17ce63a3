"""Item 6: the random-weight Qwen3-0.6B-architecture scorer (`export.prod_size`'s model) at batch x tokens, on
the backend that was fastest in item 2, in its own process so that its peak memory (ru_maxrss: weights, runtime,
activations) is its own and is returned to the system afterwards.

    python -m bench.prod --dir EXPORT --backend onnx-int8 --threads 2 --batch 32 --tokens 256   # prints JSON

Prompts are random token ids below the tiny tokenizer's vocabulary (the weights are random: only the shapes and
the arithmetic matter), all of the same length, so no padding is computed.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.timing import measure

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 390, size=(args.batch, args.tokens)).tolist()
    start = time.perf_counter()
    if args.backend.startswith("onnx-"):
        from export.runtime import OnnxScorer

        if args.dir is None:
            raise SystemExit("--dir (an ONNX export) is needed for the onnx backends")
        scorer = OnnxScorer.from_dir(args.dir, threads=args.threads, variant=args.backend.split("-")[1],
                                     batch_size=args.batch)  # fmt: skip

        def fn() -> Any:
            return scorer.grade_logits(ids)
    else:
        from afrl.contract import GradeScale, PromptBuilder
        from afrl.scorer import TorchScorer, grade_logits
        from bench.prepare import build_qwen3, qwen3_config

        model, tok = build_qwen3(qwen3_config(args.shrunk))
        if args.backend == "torch-bf16":
            model = model.to(torch.bfloat16)
        t = TorchScorer(model, tok, PromptBuilder(tok), GradeScale(), batch_size=args.batch)
        x = torch.tensor(ids)

        def fn() -> Any:
            with torch.inference_mode():
                return grade_logits(t.model, x, torch.ones_like(x), t.grade_ids)

    load_s = time.perf_counter() - start
    timing = measure(fn, args.warmup, args.repeats, args.budget_s)
    return {
        "backend": args.backend,
        "batch": args.batch,
        "tokens": args.tokens,
        "threads": args.threads,
        "load_s": round(load_s, 2),
        **timing.to_dict(items=args.batch),
        "pairs_per_s": round(timing.per_s(args.batch), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_qwen3(cfg: Any, export_dir: Path | None, backend: str) -> dict[str, Any]:
    """Runs this module in a subprocess and returns its JSON, with the model's configuration.

    `export_dir` is the ONNX export for onnx backends; torch backends build the model from its configuration.
    """
    from bench.prepare import qwen3_config

    where = ["--dir", str(export_dir)] if export_dir is not None else []
    cmd = [
        sys.executable, "-m", "bench.prod", *where, *(["--shrunk"] if cfg.quick else []), "--backend", backend,
        "--threads", str(cfg.threads), "--batch", str(cfg.qwen3_batch), "--tokens", str(cfg.qwen3_tokens), "--warmup",
        str(cfg.warmup), "--repeats", str(cfg.repeats), "--budget-s", str(cfg.budget_s),
    ]  # fmt: skip
    log.info("bench: Qwen3-0.6B architecture on %s, %d x %d tokens", backend, cfg.qwen3_batch, cfg.qwen3_tokens)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.prod failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    config = qwen3_config(cfg.quick)
    result["model"] = "random Qwen3-0.6B architecture" + (" (shrunk for --quick)" if cfg.quick else "")
    result["config"] = config
    result["qwen3_0p6b_pairs_per_s"] = result["pairs_per_s"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="the export from bench.prepare.qwen3_export (onnx)")
    parser.add_argument("--shrunk", action="store_true", help="the two-layer --quick configuration (torch only)")
    parser.add_argument("--backend", default="onnx-int8", help="onnx-int8, onnx-fp32, torch-fp32 or torch-bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run_in_process(args)))  # the parent reads this one line


if __name__ == "__main__":
    main()
