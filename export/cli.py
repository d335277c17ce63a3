"""`afrl export`: write the ONNX scorer, the KV-cache decoder, tokenizer and a verified manifest into a folder.

Example: afrl export --model default --out runs/onnx [--int8] [--fp16] [--check-data dev.jsonl]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from export import parity


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (scorer, decoder, INT8/fp16)", description=__doc__)
    p.add_argument("--model", default="default", help="`default`, `default-base`, a local folder, or a cached hub id")
    p.add_argument("--out", required=True, type=Path, help="output folder (must be new or empty)")
    p.add_argument("--int8", action="store_true", help="also write dynamic INT8 (kept only if it passes the gate)")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 scorer for CUDA")
    p.add_argument("--check-data", type=Path, default=None, help="JSONL of {query, document} for parity and gates")
    p.add_argument("--max-check-pairs", type=int, default=32, help="use at most this many check pairs")
    p.add_argument(
        "--int8-min-agreement",
        type=float,
        default=parity.INT8_MIN_AGREEMENT,
        help="refuse INT8 when its grades agree with fp32 on fewer of the check pairs (default %(default)s)",
    )
    p.add_argument(
        "--int8-max-score-delta",
        type=float,
        default=parity.INT8_MAX_SCORE_DELTA,
        help="refuse INT8 when any expected-grade score moves more than this (default %(default)s)",
    )
    p.add_argument("--int8-per-channel", action="store_true", help="per-channel INT8 weight scales")
    p.add_argument("--fp32-tolerance", type=float, default=parity.FP32_TOLERANCE, help=argparse.SUPPRESS)
    p.add_argument("--no-decoder", action="store_true", help="skip the explanation decoder")
    p.add_argument(
        "--external-data",
        choices=["auto", "yes", "no"],
        default="auto",
        help="weights in scorer.onnx.data (auto: when over 2 GB)",
    )
    p.add_argument("--no-optimize", action="store_true", help="skip onnxscript graph optimisation (faster export)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from afrl.cli import set_threads
    from export.pipeline import ExportOptions, export_model

    set_threads(args.threads)
    opts = ExportOptions(
        out=args.out,
        int8=args.int8,
        fp16=args.fp16,
        check_data=args.check_data,
        max_check_pairs=args.max_check_pairs,
        fp32_tolerance=args.fp32_tolerance,
        int8_min_agreement=args.int8_min_agreement,
        int8_max_score_delta=args.int8_max_score_delta,
        int8_per_channel=args.int8_per_channel,
        decoder=not args.no_decoder,
        external_data={"auto": None, "yes": True, "no": False}[args.external_data],
        optimize=not args.no_optimize,
        overwrite=args.overwrite,
        threads=args.threads,
    )
    manifest = export_model(args.model, opts)
    return {
        "out": str(args.out),
        "files": sorted(manifest.files),
        "parity": manifest.parity,
        "preferred_scorer": manifest.extra["preferred_scorer"],
    }
