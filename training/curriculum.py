"""Curriculum RL: named stages run in order, each on its own data selection, each starting from the last.

A stage selects its records by selectors computed from the data and from the SFT model's own difficulty
(scored once with the model the curriculum starts from and cached in `difficulty.jsonl`):

* `all`                      every record
* `head_rules`, `tail_rules` rule-world records whose deciding rule is a head (tail) rule
* `clear_grades`             the clear-cut grades: 0 and K
* `easy`                     the SFT model is right and sure (p(argmax) >= `unsure_below`)
* `hard`                     the SFT model is wrong or unsure (p(argmax) < `unsure_below`)

A list of selectors is their intersection. Each stage is one `train_rl` run with the base RL config plus the
stage's overrides (`max_steps`, `sft_coef`, ...), in `output_dir/<k>_<name>/`, with its selection recorded in
`selection.json` (ids, counts by grade and by rule). A stage whose folder has a manifest is done; re-running the
command resumes at the first unfinished stage (and inside it from its last checkpoint).

    afrl train curriculum --config training/configs/curriculum_rules.yaml
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data import Record

log = logging.getLogger(__name__)

SELECTORS = ("all", "head_rules", "tail_rules", "clear_grades", "easy", "hard")


@dataclass(frozen=True)
class Difficulty:
    """How the SFT model does on one record."""

    id: str
    predicted: int
    p_gold: float
    p_max: float

    def correct(self, gold: int) -> bool:
        return self.predicted == gold


@dataclass(frozen=True)
class Stage:
    name: str
    select: tuple[str, ...]
    overrides: dict[str, Any]
    max_records: int | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> Stage:
        if not isinstance(spec, dict) or "name" not in spec or "select" not in spec:
            raise ValueError(f"a curriculum stage is a mapping with `name` and `select`, got {spec!r}")
        select = spec["select"]
        select = (select,) if isinstance(select, str) else tuple(select)
        unknown = [s for s in select if s not in SELECTORS]
        if unknown:
            raise ValueError(f"stage {spec['name']!r}: unknown selectors {unknown}; known: {', '.join(SELECTORS)}")
        return cls(str(spec["name"]), select, dict(spec.get("overrides") or {}), spec.get("max_records"))


@dataclass
class AfrlCurriculumConfig:
    """The stages and the base RL config they share."""

    rl_config: str = field(default="", metadata={"help": "base RL YAML (training/configs/rl_*.yaml)"})
    output_dir: str = field(default="runs/curriculum", metadata={"help": "one sub-folder per stage"})
    stages: list[str] = field(
        default_factory=list,
        metadata={"help": "in YAML: a list of {name, select, overrides?, max_records?} mappings"},
    )
    difficulty_model: str | None = field(default=None, metadata={"help": "default: the RL config's model"})
    unsure_below: float = field(default=0.6, metadata={"help": "p(argmax) below this counts as unsure"})
    seed: int = field(default=0, metadata={"help": "seed of per-stage subsampling"})

    def __post_init__(self) -> None:
        if not self.rl_config:
            raise ValueError("set rl_config to the base RL YAML the stages share")
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        self.parsed = [Stage.from_spec(s) for s in self.stages]
        names = [s.name for s in self.parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")


def select_records(
    records: Sequence[Record],
    difficulty: dict[str, Difficulty],
    select: Sequence[str],
    unsure_below: float,
    max_grade: int = 3,
) -> list[Record]:
    """The records every selector in `select` keeps (see the module docstring)."""
    from training.rule_world import HEAD_RULES

    head = set(HEAD_RULES)

    def keep(r: Record, s: str) -> bool:
        if s == "all":
            return True
        if s == "head_rules":
            return r.rule is not None and r.rule in head
        if s == "tail_rules":
            return r.rule is not None and r.rule not in head
        if s == "clear_grades":
            return r.grade in (0, max_grade)
        d = difficulty.get(r.id)
        if d is None:
            raise KeyError(f"no difficulty for record {r.id}: score the records with the SFT model first")
        sure_and_right = d.correct(r.grade) and d.p_max >= unsure_below
        return sure_and_right if s == "easy" else not sure_and_right

    return [r for r in records if all(keep(r, s) for s in select)]


def compute_difficulty(model: str, records: Sequence[Record], cache: Path) -> dict[str, Difficulty]:
    """Score every record once with the starting model; cached as JSONL so that resuming does not rescore."""
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        known = {r["id"]: Difficulty(**r) for r in rows}
        if all(r.id in known for r in records):
            return known
    from afrl.scorer import load_scorer

    scorer = load_scorer(model)
    results = scorer.score([(r.query, r.document) for r in records])
    out = {
        r.id: Difficulty(r.id, res.grade, res.probabilities[r.grade], max(res.probabilities))
        for r, res in zip(records, results, strict=True)
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(d.__dict__) + "\n" for d in out.values()))
    return out


def selection_record(stage: Stage, selected: Sequence[Record], total: int) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "select": list(stage.select),
        "overrides": stage.overrides,
        "selected": len(selected),
        "of": total,
        "by_grade": dict(sorted(Counter(r.grade for r in selected).items())),
        "by_rule": dict(sorted(Counter(r.rule or "-" for r in selected).items())),
        "ids": [r.id for r in selected],
    }


def _override_args(overrides: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, list):
            args += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            args += [f"--{key}", json.dumps(value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def train_curriculum(config: AfrlCurriculumConfig) -> Path:
    """Run the stages in order (skipping finished ones); returns the last stage's model folder."""
    import random

    from training.config import parse_config
    from training.rl.config import AfrlGRPOConfig
    from training.rl.trainer import train_rl
    from training.sources import load_sources

    out = Path(config.output_dir)
    base = parse_config(AfrlGRPOConfig, ["--config", config.rl_config, "--output_dir", str(out / "_base")])
    records = load_sources(base.data, base.dev_fraction, base.split_seed)
    difficulty = compute_difficulty(config.difficulty_model or base.model, records, out / "difficulty.jsonl")
    model = base.model
    history = []
    for k, stage in enumerate(config.parsed):
        stage_dir = out / f"{k}_{stage.name}"
        selected = select_records(records, difficulty, stage.select, config.unsure_below)
        if stage.max_records is not None and len(selected) > stage.max_records:
            selected = random.Random(config.seed + k).sample(selected, stage.max_records)
        if not selected:
            raise ValueError(f"stage {stage.name!r} selects no records ({'+'.join(stage.select)})")
        stage_dir.mkdir(parents=True, exist_ok=True)
        selection = selection_record(stage, selected, len(records))
        (stage_dir / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
        history.append({k: v for k, v in selection.items() if k != "ids"} | {"dir": str(stage_dir), "init": model})
        if (stage_dir / "afrl.json").is_file():
            log.info("stage %s done, skipping", stage.name)
        else:
            log.info("stage %d %s: %d of %d records", k, stage.name, len(selected), len(records))
            argv = ["--config", config.rl_config, "--output_dir", str(stage_dir), "--model", str(model)]
            train_rl(parse_config(AfrlGRPOConfig, [*argv, *_override_args(stage.overrides)]), selected)
        model = str(stage_dir)
    (out / "curriculum.json").write_text(json.dumps({"stages": history, "final": model}, indent=1) + "\n")
    return Path(model)
