"""`afrl train chain --config FILE`: run a model's training stages in order, one command, resumable.

A chain is a YAML list of stages, each a command (an `afrl ...` or `python -m ...` argv) and the files that exist
once it has finished (`done`). Running the chain skips every stage whose files all exist and runs the others in
order, each in its own process with its own progress bars; a stage that fails stops the chain with its exit
status and the command to run again. So a stopped chain resumes at its first unfinished stage, and a stopped
`afrl train` stage inside it resumes from its own last checkpoint (every distillation stage saves them).

`training/configs/chain_default_student.yaml` is the shipped default student's chain (pool, encoder, prefix-LM base,
contract prompt, explanation a and b, evaluation; about 2 h 10 min on a 2-core CPU by its stages' measured times).

Why not make or doit: make decides by timestamps, so an evaluation writing into a finished stage's folder would
make every later stage stale and retrain hours of work; doit would be a dependency for what is a loop over six
commands. The schema is checked with pydantic (already a dependency of the service), so a typo in the chain file
fails before anything runs, naming the field.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)


class ChainError(RuntimeError):
    """A chain file that does not parse, or a stage that failed or did not write what it promised."""


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    run: list[str] = Field(min_length=1, description="the command: `afrl ...`, `python ...` or any executable")
    done: list[str] = Field(min_length=1, description="files that all exist once the stage has finished")
    minutes: float | None = Field(None, ge=0, description="the stage's measured duration, for the plan")
    threads: bool = Field(False, description="append `--threads N` when the chain is run with --threads")


class Chain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    stages: list[Stage] = Field(min_length=1)


def load_chain(path: str | Path) -> Chain:
    path = Path(path)
    if not path.is_file():
        raise ChainError(f"chain config {path} not found")
    try:
        return Chain.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (ValidationError, yaml.YAMLError) as e:
        raise ChainError(f"{path} is not a valid chain config: {e}") from e


def is_done(stage: Stage, root: Path) -> bool:
    return all((root / f).exists() for f in stage.done)


def command(stage: Stage, threads: int | None) -> list[str]:
    """The stage's argv as it runs: `afrl` and `python` are this interpreter's, so the chain uses this venv."""
    head, *rest = stage.run
    if head == "afrl":
        argv = [sys.executable, "-m", "afrl.cli", *rest]
    elif head == "python":
        argv = [sys.executable, *rest]
    else:
        argv = list(stage.run)
    if stage.threads and threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def plan(chain: Chain, root: Path) -> str:
    lines = []
    for i, stage in enumerate(chain.stages, 1):
        state = "done" if is_done(stage, root) else "to run"
        minutes = f", ~{stage.minutes:g} min" if stage.minutes is not None else ""
        lines.append(f"  {i}. {stage.name} ({state}{minutes}): {shlex.join(stage.run)}")
    pending = sum(s.minutes or 0 for s in chain.stages if not is_done(s, root))
    lines.append(f"  about {pending:g} min left by the stages' measured times")
    return "\n".join(lines)


def run_chain(config: str | Path, threads: int | None = None, dry_run: bool = False, root: Path | None = None) -> int:
    """Run the unfinished stages of the chain in `config` in order; 0 when every stage is done."""
    chain = load_chain(config)
    root = Path(root or os.getcwd())
    print(f"chain {config}: {chain.description}\n{plan(chain, root)}", flush=True)
    if dry_run:
        return 0
    for i, stage in enumerate(chain.stages, 1):
        if is_done(stage, root):
            continue
        argv = command(stage, threads)
        print(f"\n[{i}/{len(chain.stages)}] {stage.name}: {shlex.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(argv, cwd=root)
        minutes = (time.perf_counter() - started) / 60
        if code != 0:
            raise ChainError(
                f"stage {stage.name} failed (exit {code}) after {minutes:.1f} min. Fix it and run the chain again: "
                "finished stages are skipped and an `afrl train` stage resumes from its last checkpoint"
            )
        missing = [f for f in stage.done if not (root / f).exists()]
        if missing:
            raise ChainError(f"stage {stage.name} exited 0 but did not write {missing}: check its output folder")
        print(f"[{i}/{len(chain.stages)}] {stage.name}: done in {minutes:.1f} min", flush=True)
    print("chain: every stage is done", flush=True)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """`afrl train chain` (parser in training/cli.py): no free overrides, a chain file is edited instead."""
    if args.overrides:
        print(f"afrl train chain: unknown arguments {args.overrides}; edit the chain file instead", file=sys.stderr)
        return 2
    try:
        return run_chain(args.config, args.threads, args.dry_run)
    except ChainError as e:
        print(f"afrl train chain: {e}", file=sys.stderr)
        return 1
