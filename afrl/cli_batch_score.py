"""`afrl batch-score`: score a JSONL or Parquet file of (query, document) pairs into Parquet shards, resumably, in
process (`--engine local`) or on Ray Data (`--engine ray`); see afrl/batch_score.py for the formats."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "batch-score", help="score a file of pairs into Parquet shards (local or Ray)", description=__doc__
    )
    p.add_argument("--model", default="default", help="`default`, `default-base`, a model folder or a cached hub id")
    p.add_argument("--input", required=True, help='JSONL lines {"id", "query", "document"}, or Parquet (.parquet)')
    p.add_argument("--output", required=True, help="folder of Parquet shards; a rerun skips the finished ones")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="a Ray cluster (ray://HEAD:10001, or auto); default RAY_ADDRESS, else a local Ray instance",
    )
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass")
    p.add_argument("--shard-size", type=int, default=1000, help="rows per output shard (the unit of resumption)")
    p.add_argument("--explain", action="store_true", help="also generate each row's explanation (slow)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="explanation length limit (service default 160)")
    p.add_argument(
        "--instruction-file", default=None, help="a text file whose instruction replaces the model's own (as /rerank's)"
    )
    p.add_argument(
        "--max-document-tokens",
        type=int,
        default=None,
        help="a lower document budget (as /rerank's max_tokens_per_doc)",
    )
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="onnx needs an `afrl export` folder")
    p.add_argument(
        "--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="torch weights (auto: bf16 if fast)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per scorer (default: its CPUs)")
    p.add_argument(
        "--actors", type=int, default=None, help="Ray: actor pool size (default: one per GPU, or per 4 CPUs)"
    )
    p.add_argument(
        "--cpus-per-actor", type=float, default=None, help="Ray: CPUs per actor (default 1 with a GPU, else up to 4)"
    )
    p.add_argument(
        "--gpus-per-actor", type=float, default=None, help="Ray: GPUs per actor (default 1 if the cluster has any)"
    )
    p.add_argument("--ray-cpus", type=int, default=None, help="Ray: CPUs of the local instance (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from afrl.batch_score import ScoreOptions, batch_score

    if args.engine == "local":
        from afrl.cli import set_threads

        set_threads(args.threads)
    opts = ScoreOptions(
        model=args.model,
        backend=args.backend,
        dtype=args.dtype,
        threads=args.threads,
        batch_size=args.batch_size,
        explain=args.explain,
        instruction=_instruction(args.instruction_file),
        max_document_tokens=args.max_document_tokens,
        settings={} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens},
    )
    ray_options = {
        "address": args.ray_address,
        "num_cpus": args.ray_cpus,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "gpus_per_actor": args.gpus_per_actor,
    }
    summary = batch_score(
        args.input,
        args.output,
        opts,
        engine=args.engine,
        shard_size=args.shard_size,
        ray_options=ray_options,
        show_progress=not args.no_progress,
    )
    print(summary.line())
    # Bad rows are reported, not fatal: only a run in which no row could be scored fails.
    return 0 if summary.scored else 1


def _instruction(path: str | None) -> str | None:
    if path is None:
        return None
    from pathlib import Path

    if not Path(path).is_file():
        raise SystemExit(f"--instruction-file {path}: no such file")
    return Path(path).read_text(encoding="utf-8").strip()
