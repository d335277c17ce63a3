"""`afrl`: one entry point, one subcommand per verb; each subcommand is a thin function over a library call.

Subcommands are registered by the module that implements them (a `register(subparsers)` function), so a verb
exists on the command line only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

# Modules that add subcommands; each must define register(subparsers).
SUBCOMMAND_MODULES = [
    "afrl.cli_score",
    "afrl.cli_batch_score",
    "afrl.shipping",
    "training.cli",
    "training.eval_cli",
    "export.cli",
    "service.cli",
    "bench.cli",
]


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads: two processes fighting over two cores wreck latency."""
    import torch

    n = threads or int(os.environ.get("AFRL_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afrl", description="Answer-First-Reason-Later relevance models")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only a missing subcommand module is skipped; a broken import inside one must stay loud.
            if e.name is not None and name.startswith(e.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Stages that take a config accept free `--key value` overrides; every other command must parse completely.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Library errors are written to be read by a person: show them without a traceback.
        print(f"afrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    return 0 if result is None or isinstance(result, dict) else int(result)


if __name__ == "__main__":
    sys.exit(main())
