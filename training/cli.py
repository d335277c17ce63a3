"""`afrl train <stage> --config FILE [--key value ...]`: one subcommand per training stage.

Stages register themselves here once they work; each takes a YAML config (under training/configs/) whose values
CLI pairs override, and writes one output folder with the manifest.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Any

# stage name -> (module, config class name, entry function name)
STAGES: dict[str, tuple[str, str, str]] = {
    "sft": ("training.sft", "AfrlSFTConfig", "train_sft"),
    "rl": ("training.rl.trainer", "AfrlGRPOConfig", "train_rl"),
    "curriculum": ("training.curriculum", "AfrlCurriculumConfig", "train_curriculum"),
    "study": ("training.study", "AfrlStudyConfig", "run_study"),
    "distill": ("training.distill", "AfrlDistillConfig", "train_distill"),
    "evolve": ("training.evolve", "AfrlEvolveConfig", "run_evolve"),
    "pool": ("training.pools", "PoolConfig", "build_pool"),
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train a model (sft, rl, curriculum, study, distill, evolve, pool, chain)", description=__doc__
    )
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module, _, _) in STAGES.items():
        doc = module_docstring(module)
        sp = stages.add_parser(
            name,
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--config", required=True, help="YAML config file; --key value pairs after it override it")
        sp.add_argument("--threads", type=int, default=None, help="torch threads")
        sp.set_defaults(func=run, overrides=[])
    chain_doc = module_docstring("training.chain")
    chain = stages.add_parser(
        "chain",
        help=chain_doc.splitlines()[0],
        description=chain_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chain.add_argument("--config", required=True, help="chain YAML (e.g. training/configs/chain_default_student.yaml)")
    chain.add_argument("--threads", type=int, default=None, help="passed to the stages that take --threads")
    chain.add_argument("--dry-run", action="store_true", help="print the plan (which stages are done) and stop")
    chain.set_defaults(func=run_chain_cli, overrides=[])


def module_docstring(name: str) -> str:
    """A module's docstring read from its source, without importing it. Importing the stages here would load TRL,
    datasets, pandas and peft into every `afrl` process, `afrl serve` included (~150 MB of RSS), to print help."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"training stage module {name} not found", name=name)
    return (ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or "").strip()


def run_chain_cli(args: argparse.Namespace) -> int:
    from training.chain import run_cli

    return run_cli(args)


def run(args: argparse.Namespace) -> int:
    from afrl.cli import set_threads
    from training.config import parse_config

    set_threads(args.threads)
    module_name, cls_name, fn_name = STAGES[args.stage]
    module = importlib.import_module(module_name)
    config_module = importlib.import_module("training.config")
    cls = getattr(module, cls_name, None) or getattr(config_module, cls_name)
    config = parse_config(cls, ["--config", args.config, *args.overrides])
    getattr(module, fn_name)(config)
    return 0
