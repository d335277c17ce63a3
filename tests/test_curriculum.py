"""Curriculum: stage specs, selection on a toy set, and a two-stage run on a tiny model that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afrl.testing import save_tiny_model
from training.curriculum import (
    AfrlCurriculumConfig,
    Difficulty,
    Stage,
    select_records,
    train_curriculum,
)
from training.data import Record


def toy() -> tuple[list[Record], dict[str, Difficulty]]:
    records = [
        Record("a", "q", "d", 3, rule="exact_match"),  # head, clear grade, model right and sure
        Record("b", "q", "d", 0, rule="wrong_category"),  # head, clear grade, model wrong
        Record("c", "q", "d", 2, rule="colour_mismatch"),  # head, middle grade, right but unsure
        Record("d", "q", "d", 1, rule="brand_mismatch"),  # tail, right and sure
        Record("e", "q", "d", 0, rule="negation_violated"),  # tail, clear grade, wrong
        Record("f", "q", "d", 1),  # no rule (TREC-like)
    ]
    difficulty = {
        "a": Difficulty("a", 3, 0.9, 0.9),
        "b": Difficulty("b", 3, 0.1, 0.7),
        "c": Difficulty("c", 2, 0.5, 0.5),
        "d": Difficulty("d", 1, 0.8, 0.8),
        "e": Difficulty("e", 1, 0.2, 0.7),
        "f": Difficulty("f", 1, 0.95, 0.95),
    }
    return records, difficulty


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (("all",), "abcdef"),
        (("head_rules",), "abc"),
        (("tail_rules",), "de"),
        (("clear_grades",), "abe"),
        (("head_rules", "clear_grades"), "ab"),
        (("easy",), "adf"),
        (("hard",), "bce"),
        (("tail_rules", "hard"), "e"),
    ],
)
def test_selection_on_a_toy_set(select, expected):
    records, difficulty = toy()
    chosen = select_records(records, difficulty, select, unsure_below=0.6)
    assert "".join(r.id for r in chosen) == expected


def test_missing_difficulty_and_bad_stages_are_refused():
    records, _ = toy()
    with pytest.raises(KeyError, match="no difficulty"):
        select_records(records, {}, ["hard"], 0.6)
    with pytest.raises(ValueError, match="unknown selectors"):
        Stage.from_spec({"name": "x", "select": "rare"})
    with pytest.raises(ValueError, match="name"):
        Stage.from_spec({"select": "all"})
    with pytest.raises(ValueError, match="unique"):
        AfrlCurriculumConfig(rl_config="x.yaml", stages=[{"name": "a", "select": "all"}] * 2)  # type: ignore[list-item]


def test_two_stage_run_records_selections_and_resumes(tmp_path: Path, monkeypatch):
    import training.rl.trainer as trainer_mod

    model = save_tiny_model(tmp_path / "tiny")
    rl_yaml = tmp_path / "rl.yaml"
    base = Path("training/configs/rl_tiny.yaml").read_text().replace("tests-will-override", str(model))
    rl_yaml.write_text(base.replace("rules:16:0", "rules:24:0"))
    config = AfrlCurriculumConfig(
        rl_config=str(rl_yaml),
        output_dir=str(tmp_path / "cur"),
        stages=[  # type: ignore[list-item]
            {"name": "head", "select": ["head_rules"], "overrides": {"max_steps": 1}},
            {"name": "rest", "select": "all", "overrides": {"max_steps": 1, "sft_coef": 1.0}, "max_records": 8},
        ],
    )
    final = train_curriculum(config)
    out = tmp_path / "cur"
    assert final == out / "1_rest"
    head = json.loads((out / "0_head" / "selection.json").read_text())
    assert head["selected"] > 0 and set(head["by_rule"]) <= {
        "exact_match",
        "wrong_category",
        "same_category_different_product",
        "colour_mismatch",
    }
    assert json.loads((out / "1_rest" / "selection.json").read_text())["selected"] == 8
    assert (out / "difficulty.jsonl").is_file()
    summary = json.loads((out / "curriculum.json").read_text())
    assert summary["stages"][1]["init"] == str(out / "0_head")  # stage 2 starts from stage 1's model
    assert json.loads((out / "1_rest" / "afrl.json").read_text())["kind"] == "rl"

    calls = []
    monkeypatch.setattr(trainer_mod, "train_rl", lambda *a, **k: calls.append(a))
    train_curriculum(config)  # both stages done: nothing is retrained
    assert calls == []
