"""The mode-balance study: summary statistics, the computed verdict, the table, best-teacher selection, and the
whole command end to end on a tiny model (one seed, every arm, one RL step)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import Manifest
from afrl.testing import save_tiny_model, tiny_tokenizer
from training.study import AfrlStudyConfig, grade_entropy, run_study, select_best_teacher
from training.study_report import render_results, summarise


def run(arm: str, seed: int, tail: float, ndcg: float | None = None, dataset: str = "rules") -> dict:
    return {
        "dataset": dataset,
        "arm": arm,
        "seed": seed,
        "spec": {"advantage_mode": "stepwise", "sft_coef": 0.5} if arm == "stepwise_sft" else None,
        "tail_rule_accuracy": tail,
        "macro_f1": 0.5,
        "per_grade_recall": {"0": 1.0, "1": 0.0},
        "ndcg@10": ndcg,
        "model_dir": f"/m/{arm}{seed}",
    }


def test_summary_has_mean_and_std_over_seeds_and_a_plain_verdict(tmp_path):
    config = AfrlStudyConfig(results_md=str(tmp_path / "R.md"), notes_md=None, plot_png=None)
    runs = [run("grpo", s, t) for s, t in ((0, 0.2), (1, 0.4))] + [run("stepwise_sft", s, 0.3) for s in (0, 1)]
    summary = summarise(runs, config)
    grpo = next(e for e in summary["entries"] if e["arm"] == "grpo")
    assert grpo["tail_rule_accuracy"]["mean"] == pytest.approx(0.3)
    assert grpo["tail_rule_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert "ndcg@10" not in grpo  # not defined on the rule world: left out, not zero
    assert (
        summary["verdict"]
        and "stepwise_sft vs grpo on tail_rule_accuracy: **no difference detected**" in (summary["verdict"][0])
    )
    table = render_results(summary, config)
    assert "| rules | grpo | 0, 1 | 0.300 ± 0.141 |" in table
    assert "| rules | grpo | 2 | 0.300 [-0.971, 1.571] |" in table  # t(0.975, 1) = 12.71 x 0.1


def test_grade_entropy():
    assert grade_entropy({"0": 5, "1": 0}) == 0.0
    assert grade_entropy({"0": 1, "1": 1, "2": 1, "3": 1}) == pytest.approx(math.log(4))


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_text("w")
    builder = PromptBuilder(tiny_tokenizer())
    Manifest.for_builder(builder, GradeScale(), kind="rl", base_model="tiny").write(path)
    return path


def test_best_teacher_is_the_best_dev_ndcg_with_its_manifest(tmp_path):
    a, b = _model_folder(tmp_path / "a"), _model_folder(tmp_path / "b")
    (a / "eval.json").write_text(json.dumps({"ndcg@10": 0.41}))
    (b / "eval.json").write_text(json.dumps({"ndcg@10": 0.47}))
    record = select_best_teacher([a, b, tmp_path / "missing"], tmp_path / "best")
    assert record is not None and record["selected"] == str(b)
    assert (tmp_path / "best" / "afrl.json").is_file()
    assert json.loads((tmp_path / "best" / "teacher.json").read_text())["ndcg@10"] == 0.47


def tiny_study(tmp_path: Path, model: Path, **kw) -> AfrlStudyConfig:
    """A one-seed rule-world study on a tiny model folder that runs in seconds; `kw` sets the rest."""
    base = dict(
        output_dir=str(tmp_path / "study"),
        seeds=[0],
        rules_model=str(model),
        rules_train=16,
        rules_dev=24,
        max_query_tokens=16,
        max_document_tokens=32,
        sft_max_steps=1,
        sft_batch_size=4,
    )
    return AfrlStudyConfig(**(base | kw))


def test_study_command_end_to_end_on_a_tiny_model(tmp_path):
    config = tiny_study(
        tmp_path,
        save_tiny_model(tmp_path / "tiny"),
        rl_max_steps=1,
        rl_prompts_per_step=1,
        num_generations=2,
        max_completion_length=8,
        explain_sample=1,
        explain_tokens=8,
        curve_every=1,
        results_json=str(tmp_path / "mode_balance.json"),
        results_md=str(tmp_path / "RESULTS.md"),
        notes_md=None,
        plot_png=str(tmp_path / "curves.png"),
    )
    run_study(config)
    summary = json.loads((tmp_path / "mode_balance.json").read_text())
    arms = [e["arm"] for e in summary["entries"]]
    assert arms == ["sft", "grpo", "stepwise", "stepwise_sft"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"  # the four arms' JSON, table and plot
    for e in summary["entries"]:
        assert {"tail_rule_accuracy", "head_rule_accuracy", "macro_f1", "grade_entropy"} <= set(e)
    assert (tmp_path / "study" / "rules" / "seed0" / "grpo" / "afrl.json").is_file()
    assert "| rules | stepwise_sft |" in (tmp_path / "RESULTS.md").read_text()


def test_study_from_a_scratch_model_writes_curves_and_the_plot(tmp_path):
    config = AfrlStudyConfig(
        output_dir=str(tmp_path / "study"),
        seeds=[0, 1],
        rules_model="scratch",
        rules_scratch={"hidden_size": 64, "num_layers": 1, "vocab_size": 400},
        rules_train=16,
        rules_dev=40,
        max_query_tokens=16,
        max_document_tokens=32,
        sft_max_steps=1,
        sft_batch_size=4,
        rl_max_steps=2,
        rl_prompts_per_step=1,
        num_generations=2,
        max_completion_length=6,
        scale_rewards="none",
        step_rewards={"grade_exact": 0.0, "grade_distance": 0.0, "grade_share": 1.0},
        curve_every=1,
        curve_head_records=4,
        arms={"sft": None, "grpo": {"advantage_mode": "completion"}, "stepwise_sft": {"sft_coef": 0.5}},
        explain_sample=0,
        results_json=str(tmp_path / "mode_balance.json"),
        results_md=str(tmp_path / "RESULTS.md"),
        notes_md=None,
        plot_png=str(tmp_path / "plots" / "curves.png"),
    )
    run_study(config)
    for seed in (0, 1):  # SFT seeds vary: one scratch init and SFT model per seed
        assert (tmp_path / "study" / "rules" / f"seed{seed}" / "init_model" / "config.json").is_file()
    init0, init1 = (json.loads((tmp_path / "study/rules" / f"seed{s}/sft_model/afrl.json").read_text()) for s in (0, 1))
    assert init0["provenance"]["data"] != init1["provenance"]["data"]
    curve = json.loads((tmp_path / "study/rules/seed1/grpo/curve.json").read_text())["points"]
    assert [p["step"] for p in curve] == [0, 1, 2]
    summary = json.loads((tmp_path / "mode_balance.json").read_text())
    grpo = next(e for e in summary["entries"] if e["arm"] == "grpo")
    assert [p["step"] for p in grpo["curve"]["tail_rule_accuracy"]] == [0, 1, 2]
    assert grpo["tail_rule_accuracy"]["ci"] is not None and grpo["tail_rule_accuracy"]["seeds"] == [0, 1]
    assert (tmp_path / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "RESULTS.md").read_text()
    assert "![tail- and head-rule accuracy over RL steps, per arm](plots/curves.png)" in md
    assert "stepwise_sft vs grpo" in md
    assert "| exact_match | head |" in md and "| unit_conversion | tail |" in md  # the per-rule table


def test_render_only_rewrites_results_from_finished_runs_without_training(tmp_path):
    run_dir = tmp_path / "study" / "rules" / "seed0" / "grpo"
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(json.dumps(run("grpo", 0, 0.25)))
    config = AfrlStudyConfig(
        output_dir=str(tmp_path / "study"),
        seeds=[0, 1],
        rules_train=8,
        rules_dev=8,
        render_only=True,
        results_json=str(tmp_path / "mb.json"),
        results_md=str(tmp_path / "R.md"),
        notes_md=None,
    )
    run_study(config)
    summary = json.loads((tmp_path / "mb.json").read_text())
    assert [(e["arm"], e["seeds"]) for e in summary["entries"]] == [("grpo", [0])]
    assert not (tmp_path / "study" / "rules" / "seed0" / "sft_model").exists()


def test_the_budget_line_names_only_the_datasets_that_ran(tmp_path):
    common = dict(results_md=str(tmp_path / "R.md"), notes_md=None, plot_png=None, engine="plain")
    trec = AfrlStudyConfig(datasets=["trec"], trec_lora_r=0, grade_first=True, trec_sft_model="m/student", **common)
    text = render_results(summarise([run("grpo", 0, 0.0, ndcg=0.5, dataset="trec")], trec), trec)
    assert "TREC DL from `m/student`" in text and "grade drawn first" in text and "engine plain" in text
    assert "rule world" not in text and "appended below" not in text
    rules = AfrlStudyConfig(datasets=["rules"], **common)
    text = render_results(summarise([run("grpo", 0, 0.3)], rules), rules)
    assert "rule world 512 train" in text and "TREC DL from" not in text
