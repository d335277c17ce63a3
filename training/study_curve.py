"""The mode-balance study's curves: head- and tail-rule accuracy of the policy during RL, and their plot.

Forgetting is a trajectory, not an end point: an arm can lose its tail rules at step 40 and win some back by step
150. `RuleCurve` (a transformers TrainerCallback, so TRL's GRPO loop calls it without changes) scores a fixed
curve set of dev records every `every` optimiser steps with the policy's argmax grade, the grade the service
serves, and writes `curve.json` in the run folder. The curve set keeps every tail-rule record of the dev set and
a seeded sample of head-rule records: tail accuracy is what the study is about, and a full dev pass at every point
would cost more than the RL steps between points. `plot_curves` draws the mean over seeds per arm with a band of
one standard deviation (matplotlib: the standard plotting library; PNG so the README shows it).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from training.data import Record
from training.metrics import per_rule_accuracy
from training.rule_world import HEAD_RULES

CURVE_NAME = "curve.json"


def curve_records(dev: Sequence[Record], head_records: int, seed: int = 0) -> list[Record]:
    """Every dev record of a tail rule plus `head_records` head-rule records drawn with `seed`."""
    head = set(HEAD_RULES)
    tail = [r for r in dev if r.rule and r.rule not in head]
    heads = [r for r in dev if r.rule in head]
    return tail + random.Random(seed).sample(heads, min(head_records, len(heads)))


def rule_accuracy(scorer: Any, records: Sequence[Record]) -> dict[str, Any]:
    """Head / tail rule accuracy and the per-rule figures of `scorer`'s argmax grades on `records`."""
    results = scorer.score([(r.query, r.document) for r in records])
    return per_rule_accuracy(
        [r.rule for r in records], [r.grade for r in records], [res.grade for res in results], head=HEAD_RULES
    )


class RuleCurve(TrainerCallback):  # type: ignore[misc]
    """Scores the curve set at step 0, every `every` steps and at the end; writes `out` after each point."""

    def __init__(self, records: Sequence[Record], builder: Any, scale: Any, every: int, out: Path) -> None:
        if every < 1:
            raise ValueError(f"curve_every must be >= 1 (got {every})")
        self.records, self.builder, self.scale, self.every, self.out = list(records), builder, scale, every, out
        self.points: list[dict[str, Any]] = []

    def _point(self, step: int, model: Any, tokenizer: Any) -> None:
        from afrl.scorer import TorchScorer

        if self.points and self.points[-1]["step"] == step:
            return
        was_training = model.training
        model.eval()
        try:
            scorer = TorchScorer(
                model=model, tokenizer=tokenizer, builder=self.builder, scale=self.scale, batch_size=64
            )
            m = rule_accuracy(scorer, self.records)
        finally:
            model.train(was_training)
        self.points.append(
            {
                "step": step,
                "tail_rule_accuracy": m.get("tail_rule_accuracy"),
                "head_rule_accuracy": m.get("head_rule_accuracy"),
                "per_rule_accuracy": m.get("per_rule_accuracy", {}),
            }
        )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({"records": len(self.records), "points": self.points}, indent=1) + "\n")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self._point(state.global_step, model, kw.get("processing_class"))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if state.global_step % self.every == 0:
            self._point(state.global_step, model, kw.get("processing_class"))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self._point(state.global_step, model, kw.get("processing_class"))


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / CURVE_NAME
    return list(json.loads(path.read_text())["points"]) if path.is_file() else []


def mean_curves(
    curves: dict[str, list[list[dict[str, Any]]]], metric: str
) -> dict[str, list[tuple[int, float, float]]]:
    """{arm: [(step, mean, std)]} over the seeds' curves, at the steps every seed of the arm has."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for arm, seeds in curves.items():
        by_seed = [{p["step"]: p[metric] for p in c if p.get(metric) is not None} for c in seeds if c]
        if not by_seed:
            continue
        steps = sorted(set.intersection(*(set(s) for s in by_seed)))
        out[arm] = [
            (
                step,
                statistics.fmean(s[step] for s in by_seed),
                statistics.stdev([s[step] for s in by_seed]) if len(by_seed) > 1 else 0.0,
            )
            for step in steps
        ]
    return out


def plot_curves(curves: dict[str, list[list[dict[str, Any]]]], out: Path, title: str) -> Path | None:
    """PNG of tail (left) and head (right) rule accuracy over RL steps, one line per arm (mean ± std band)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    panels = [("tail_rule_accuracy", "tail-rule accuracy"), ("head_rule_accuracy", "head-rule accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    drawn = False
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for arm, points in mean_curves(curves, metric).items():
            steps = [p[0] for p in points]
            ax.plot(steps, [p[1] for p in points], marker="o", markersize=3, label=arm)
            ax.fill_between(steps, [p[1] - p[2] for p in points], [p[1] + p[2] for p in points], alpha=0.15)
            drawn = True
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
