"""`afrl eval`: evaluate a model on a TREC folder (rerank + judged pool) or on JSONL / rule-world records.

    afrl eval --model runs/sft_smollm2_trec --trec-dir ../shared/data/trec-dl/dl20 --split dev --out runs/eval_dl20
    afrl eval --model runs/sft_rules_small --data rules:1000:1 --out runs/eval_rules
    afrl eval --model default --jsonl pairs.jsonl --out runs/eval_jsonl
    afrl eval --teacher minilm --calibration runs/pool_minilm/calibration.json --trec-dir ... --split dev --out ...
    afrl eval --references-only --trec-dir ../shared/data/trec-dl/dl20 --split dev --out runs/refs_dl20dev

`--split dev` (with `--dev-fraction 0.2 --split-seed 0`, the SFT defaults) selects exactly the queries that
`trec:DIR:dev` held out in training. Writes OUT/metrics.json, OUT/report.md, OUT/run.trec (TREC mode) and
OUT/explanations.jsonl (the greedy explanation sample).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "ndcg@10",
    "bm25_ndcg@10",
    "ndcg@10_judged",
    "mrr@10",
    "map",
    "accuracy",
    "macro_f1",
    "ece",
    "consistency",
    "consistency_free",
    "head_rule_accuracy",
    "tail_rule_accuracy",
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: nDCG@10, MRR@10, MAP, accuracy, macro-F1, ECE, consistency, per-rule accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="`default`, `default-base`, a model folder or a cached hub id")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--trec-dir", help="TREC folder (queries.tsv, passages.tsv, qrels.txt, bm25_top100.run)")
    data.add_argument("--jsonl", help="JSONL relevance records (judged pool grouped by qid)")
    data.add_argument("--data", help="any training data spec, e.g. rules:1000:1 or trec:DIR:dev (judged pool)")
    p.add_argument(
        "--teacher",
        default=None,
        help="evaluate a calibrated teacher instead of --model (training.teachers spec, e.g. minilm)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="with --teacher: calibration.json (fused) or calibration_teacher_only.json of its pool",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--run", default=None, help="first-stage run to rerank (default: TREC folder's bm25_top100.run)")
    p.add_argument("--qids-from", default=None, help="queries to evaluate: trec:DIR[:train|:dev] or a file of ids")
    p.add_argument("--split", choices=["all", "train", "dev"], default="all", help="part of --trec-dir to evaluate")
    p.add_argument("--dev-fraction", type=float, default=0.2, help="as in training (query-level split)")
    p.add_argument("--split-seed", type=int, default=0, help="as in training")
    p.add_argument("--max-queries", type=int, default=None, help="only the first N selected queries (smoke runs)")
    p.add_argument("--max-records", type=int, default=None, help="a seeded subset of the records (JSONL / data)")
    p.add_argument("--explain-sample", type=int, default=16, help="explanations to generate and check (0: none)")
    p.add_argument("--explain-tokens", type=int, default=128, help="max new tokens per explanation")
    p.add_argument("--instruction-file", default=None, help="override the model's instruction (system message)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    p.add_argument(
        "--references-only",
        action="store_true",
        help="TREC mode: score nothing, report only the first-stage run's order and its shuffled chance level",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: AFRL_THREADS or all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from afrl.cli import set_threads
    from training.data import TrecCollection, read_jsonl
    from training.evaluate import (
        evaluate_records,
        evaluate_trec,
        qids_from_spec,
        reference_metrics,
        split_qids,
        write_report,
    )
    from training.sources import load_source, subset

    set_threads(args.threads)
    if args.qids_from and args.split != "all":
        raise ValueError("give either --qids-from or --split, not both")
    if args.trec_dir is None and (args.qids_from or args.split != "all" or args.run):
        raise ValueError("--run, --qids-from and --split apply to --trec-dir only")
    if args.references_only and not args.trec_dir:
        raise ValueError("--references-only needs --trec-dir (the reference rows rank a first-stage run)")
    if bool(args.teacher) != bool(args.calibration):
        raise ValueError("--teacher and --calibration go together (the calibration maps its scores to grades)")
    instruction = Path(args.instruction_file).read_text().strip() if args.instruction_file else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trec_dir:
        coll = None
        if args.qids_from:
            qids = qids_from_spec(args.qids_from, args.dev_fraction, args.split_seed)
        else:
            coll = TrecCollection.load(args.trec_dir, args.run)
            qids = split_qids(coll, args.split, args.dev_fraction, args.split_seed)
        if args.max_queries is not None:
            qids = qids[: args.max_queries]
        if args.references_only:
            metrics = {
                "mode": "trec",
                "queries": len(qids),
                "data": f"{args.trec_dir} ({args.qids_from or args.split})",
            }
            metrics |= reference_metrics(coll or TrecCollection.load(args.trec_dir, args.run), qids)
            write_report(metrics, out)
            return {k: v for k, v in metrics.items() if k.startswith(("bm25_", "shuffled_"))} | {"out": str(out)}
        log.info("evaluating %d queries of %s", len(qids), args.trec_dir)
        metrics = evaluate_trec(
            _scorer(args),
            args.trec_dir,
            qids=qids,
            run_file=args.run,
            explain_sample=0 if args.teacher else args.explain_sample,
            instruction=instruction,
            run_out=out / "run.trec",
            explain_tokens=args.explain_tokens,
        )
        metrics["data"] = f"{args.trec_dir} ({args.qids_from or args.split})"
    else:
        records = read_jsonl(args.jsonl) if args.jsonl else load_source(args.data, args.dev_fraction, args.split_seed)
        records = subset(records, args.max_records)
        metrics = evaluate_records(
            _scorer(args),
            records,
            0 if args.teacher else args.explain_sample,
            instruction=instruction,
            explain_tokens=args.explain_tokens,
        )
        metrics["data"] = args.jsonl or args.data
    metrics["model"] = f"teacher {args.teacher} ({args.calibration})" if args.teacher else args.model
    write_report(metrics, out)
    log.info("wrote %s", out)
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics} | {"out": str(out)}


def _scorer(args: argparse.Namespace) -> Any:
    """The model's TorchScorer, or with --teacher the calibrated teacher (it has no explanations)."""
    if args.teacher:
        from training.teacher_eval import CalibratedTeacher

        return CalibratedTeacher(args.teacher, args.calibration)
    from afrl.scorer import load_scorer

    return load_scorer(args.model, batch_size=args.batch_size)
