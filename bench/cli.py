"""`afrl bench`: answer-first speed, backends, roofline, prefix reuse, the service, production size, memory, the
default model against the previous one, a /rerank of 100 documents, and /explain per backend.

    afrl bench --model default --threads 2 --json bench/results/cpu.json --markdown BENCHMARKS.md
    afrl bench --model default --skip backends answer_first roofline prefix service qwen3 --json /tmp/m.json
    afrl bench --model PATH --quick --json /tmp/bench.json            # seconds on a tiny model: code paths only
    afrl bench --from-json bench/results/cpu.json --markdown BENCHMARKS.md   # re-render the Markdown only

The ONNX exports it needs are built once into the cache (`--cache-dir`, default ~/.cache/afrl/bench); prepare
them ahead with `python -m bench.prepare --model default`. Exit status 1 when an item failed (the others
are still measured and written); never because of a figure.

The second command runs items 8 and 9 only (no exports needed): `--model` against the `--compare` models
(default: the previous default, afrl/shipped/sft-smollm2-trec-balanced) and a /rerank of 100 documents served.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from bench.runner import HEADLINES, ITEMS

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: ratios measured side by side, written as JSON and BENCHMARKS.md",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="`default`, `default-base`, a local folder, or a cached hub id")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI, tiny models)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (required unless --from-json)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the Markdown report (e.g. BENCHMARKS.md)")
    p.add_argument("--from-json", type=Path, default=None, help="render --markdown from this JSON; measure nothing")
    p.add_argument("--gpu-json", type=Path, default=None, help="GPU results for section 11 (default: gpu.json beside)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the exports are kept (~/.cache/afrl/bench)")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 3, quick 2)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="models the `models` item measures --model against; the first gives default_speedup_vs_previous "
        "(default: the previous default, afrl/shipped/sft-smollm2-trec-balanced)",
    )
    p.add_argument(
        "--service-max-batch", type=int, default=None, help="max_batch_pairs of the batching-on server (default 32)"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=ITEMS, help="items to leave out")
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    """The command as a person would retype it (from the parsed options, whoever called us)."""
    parts = ["afrl", "bench", "--model", args.model]
    parts += ["--quick"] if args.quick else []
    for flag in ("json", "markdown", "cache_dir", "threads", "repeats", "service_max_batch"):
        value = getattr(args, flag)
        if value is not None:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    if args.compare:
        parts += ["--compare", *args.compare]
    if args.skip:
        parts += ["--skip", *args.skip]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from bench.report import write_markdown

    if args.from_json is not None:
        if args.markdown is None:
            raise ValueError("--from-json renders Markdown: pass --markdown PATH as well")
        write_markdown(args.from_json, args.markdown, args.gpu_json)
        print(f"wrote {args.markdown}")
        return 0
    if args.json is None:
        raise ValueError("pass --json OUT (where the results go), or --from-json IN --markdown OUT to re-render")

    from bench.config import BenchConfig
    from bench.runner import run as run_bench

    overrides: dict[str, Any] = {"model": args.model, "cache_dir": args.cache_dir, "skip": tuple(args.skip)}
    if args.threads:
        overrides["threads"] = args.threads
    if args.repeats:
        overrides["repeats"] = args.repeats
    if args.compare:
        overrides["compare"] = tuple(args.compare)
    if args.service_max_batch:
        overrides["service_max_batch"] = args.service_max_batch
    cfg = BenchConfig.quick_for(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_bench(cfg, command_line(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.markdown is not None:
        write_markdown(args.json, args.markdown, args.gpu_json)
        print(f"wrote {args.markdown}")
    for key in HEADLINES:
        print(f"{key}: {result.get(key)}")
    if result["errors"]:
        print("failed items: " + ", ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0
