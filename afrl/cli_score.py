"""`afrl score`: grade one (query, document) pair from the command line with the torch reference scorer."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("score", help="score one query/document pair", description=__doc__)
    p.add_argument("--model", default="default", help="`default`, a local folder, or a cached hub id")
    p.add_argument("--query", required=True)
    p.add_argument("--document", required=True)
    p.add_argument("--instruction", default=None, help="override the model's instruction (system message)")
    p.add_argument("--json", action="store_true", help='print {"grade", "score", "probabilities"} as JSON')
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: AFRL_THREADS or all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from afrl.cli import set_threads
    from afrl.scorer import load_scorer

    set_threads(args.threads)
    if not args.query.strip() or not args.document.strip():
        raise ValueError("--query and --document must not be empty")
    scorer = load_scorer(args.model)
    result = scorer.score([(args.query, args.document)], instruction=args.instruction)[0]
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    names = scorer.scale.names
    print(f"grade {result.grade} ({names[result.grade]})  score {result.score:.4f}")
    for k, p in enumerate(result.probabilities):
        print(f"  P({k} {names[k]:<20}) = {p:.4f}")
    return 0
