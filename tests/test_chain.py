"""`afrl train chain`: stages run in order, finished ones are skipped on a re-run, failures stop the chain loudly,
and the shipped default student's chain wires each stage's output into the next."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from training.chain import ChainError, command, load_chain, run_chain

ROOT = Path(__file__).resolve().parents[1]


def _chain(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"description": "test", "stages": stages}))
    return path


def _stage(name: str, code: str, done: str) -> dict:
    return {"name": name, "run": ["python", "-c", code], "done": [done]}


def test_a_chain_runs_in_order_resumes_after_a_failure_and_skips_finished_stages(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    first = f"open({str(log)!r}, 'a').write('a'); open('a.done', 'w')"
    broken = "raise SystemExit(3)"
    config = _chain(tmp_path, [_stage("a", first, "a.done"), _stage("b", broken, "b.done")])
    with pytest.raises(ChainError, match=r"stage b failed \(exit 3\).*run the chain again"):
        run_chain(config, root=tmp_path)
    assert log.read_text() == "a"
    fixed = f"open({str(log)!r}, 'a').write('b'); open('b.done', 'w')"
    config = _chain(tmp_path, [_stage("a", first, "a.done"), _stage("b", fixed, "b.done")])
    assert run_chain(config, root=tmp_path) == 0
    assert log.read_text() == "ab"  # a was not run again
    assert run_chain(config, root=tmp_path) == 0 and log.read_text() == "ab"  # nothing left to run


def test_a_stage_that_does_not_write_what_it_promised_stops_the_chain(tmp_path: Path) -> None:
    config = _chain(tmp_path, [_stage("quiet", "pass", "never.done")])
    with pytest.raises(ChainError, match=r"quiet exited 0 but did not write \['never.done'\]"):
        run_chain(config, root=tmp_path)


def test_a_bad_chain_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    config = _chain(tmp_path, [{"name": "a", "run": ["python"], "done": ["x"], "minuts": 3}])
    with pytest.raises(ChainError, match="minuts"):
        load_chain(config)
    with pytest.raises(ChainError, match="not found"):
        load_chain(tmp_path / "missing.yaml")


def test_commands_use_this_interpreter_and_threads_go_where_asked(tmp_path: Path) -> None:
    chain = load_chain(
        _chain(
            tmp_path,
            [
                {"name": "t", "run": ["afrl", "train", "pool", "--config", "x"], "done": ["x"], "threads": True},
                {"name": "p", "run": ["python", "-m", "m"], "done": ["y"]},
            ],
        )
    )
    assert command(chain.stages[0], 2) == [sys.executable, "-m", "afrl.cli", "train", "pool", "--config", "x",
                                           "--threads", "2"]  # fmt: skip
    assert command(chain.stages[1], 2) == [sys.executable, "-m", "m"]


def _arg(run: list[str], flag: str) -> str | None:
    return run[run.index(flag) + 1] if flag in run else None


def test_the_default_student_chain_feeds_each_stage_from_an_earlier_one() -> None:
    """Every `afrl train` stage's config exists; its output folder is what its `done` names; the student it
    starts from (its config's or the override) and the pool it reads are written by earlier stages."""
    chain = load_chain(ROOT / "training/configs/chain_default_student.yaml")
    written: set[str] = set()
    for stage in chain.stages:
        run = stage.run
        if run[:2] == ["afrl", "train"]:
            cfg = yaml.safe_load((ROOT / _arg(run, "--config")).read_text())
            out = _arg(run, "--output_dir") or cfg["output_dir"]
            assert all(d.startswith(out + "/") for d in stage.done), stage.name
            student = _arg(run, "--student_model") or cfg.get("student_model")
            if student is not None:
                assert student in written, f"{stage.name} starts from {student}, which no earlier stage writes"
            for source in cfg.get("data", []):
                assert source.removeprefix("pool:") in written, f"{stage.name} reads {source} before it exists"
        for inputs in (_arg(run, "--encoder"), _arg(run, "--model"), _arg(run, "--pool")):
            if inputs is not None:
                assert inputs in written, f"{stage.name} reads {inputs}, which no earlier stage writes"
        written |= {str(Path(d).parent) for d in stage.done}
    assert sum(s.minutes or 0 for s in chain.stages) <= 150  # about 2 hours here (the budget)


def test_stop_at_step_stops_and_saves_there() -> None:
    from transformers import TrainerControl, TrainerState

    from training.distill_pool import time_budget_callback

    callback, control = time_budget_callback(None, stop_at_step=3), TrainerControl()
    for step in (1, 2):
        callback.on_step_end(None, TrainerState(global_step=step), control)
        assert not control.should_training_stop
    callback.on_step_end(None, TrainerState(global_step=3), control)
    assert control.should_training_stop and control.should_save


def test_the_cli_prints_the_plan_and_refuses_free_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from afrl.cli import main

    config = _chain(tmp_path, [_stage("a", "raise SystemExit(1)", "a.done")])
    assert main(["train", "chain", "--config", str(config), "--dry-run"]) == 0
    assert "1. a (to run)" in capsys.readouterr().out
    assert main(["train", "chain", "--config", str(config), "--lr", "3"]) == 2
    assert "edit the chain file" in capsys.readouterr().err
