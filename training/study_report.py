"""The mode-balance study's report: the summary JSON, the Markdown tables of training/RESULTS.md, the plot of the
curves and the computed verdict (training/study_stats.py), all from the finished runs' `eval.json` files, so a
re-run with `render_only: true` rewrites them without training anything."""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.study_curve import mean_curves, plot_curves
from training.study_stats import stats, verdicts

if TYPE_CHECKING:
    from training.study import AfrlStudyConfig

log = logging.getLogger(__name__)

STEP_KEYS = ("grade", "intent", "evidence", "reasoning", "verdict")
SUMMARY_METRICS = (
    "tail_rule_accuracy",
    "head_rule_accuracy",
    "macro_f1",
    "accuracy",
    "ndcg@10",
    "ndcg@10_judged",
    "grade_entropy",
    "consistency",
)


def write_results(runs: list[dict[str, Any]], config: AfrlStudyConfig) -> Path:
    summary = summarise(runs, config)
    out = Path(config.results_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    plot = plot_study(runs, config)
    Path(config.results_md).write_text(render_results(summary, config, plot))
    log.info("wrote %s and %s (%d runs)", out, config.results_md, len(runs))
    return out


# ----------------------------------------------------------------------------------------------- summary


def summarise(runs: list[dict[str, Any]], config: AfrlStudyConfig) -> dict[str, Any]:
    entries = []
    keys = sorted({(r["dataset"], r["arm"]) for r in runs}, key=lambda k: (k[0], list(config.arm_specs).index(k[1])))
    for dataset, arm in keys:
        group = [r for r in runs if r["dataset"] == dataset and r["arm"] == arm]
        entry: dict[str, Any] = {"dataset": dataset, "arm": arm, "seeds": [r["seed"] for r in group]}
        entry["spec"] = group[0]["spec"]
        for metric in SUMMARY_METRICS:
            have = [r for r in group if r.get(metric) is not None]
            if have:
                entry[metric] = stats([float(r[metric]) for r in have], [r["seed"] for r in have])
        recalls: dict[str, list[tuple[int, float]]] = {}
        for r in group:
            for g, v in (r.get("per_grade_recall") or {}).items():
                if v is not None:
                    recalls.setdefault(str(g), []).append((r["seed"], float(v)))
        entry["per_grade_recall"] = {
            g: stats([v for _, v in sv], [s for s, _ in sv]) for g, sv in sorted(recalls.items())
        }
        rules: dict[str, list[float]] = {}
        for r in group:
            for name, v in (r.get("per_rule_accuracy") or {}).items():
                rules.setdefault(name, []).append(float(v))
        if rules:
            entry["per_rule_accuracy"] = {n: statistics.fmean(v) for n, v in sorted(rules.items())}
        signals: dict[str, list[float]] = {}
        for r in group:
            for key, v in (r.get("rl_train") or {}).items():
                signals.setdefault(key, []).append(float(v))
        if signals:
            entry["rl_train"] = {k: statistics.fmean(v) for k, v in signals.items()}
        curves = {arm: [r["curve"] for r in group if r.get("curve")]}
        for metric in ("tail_rule_accuracy", "head_rule_accuracy"):
            if points := mean_curves(curves, metric).get(arm):
                entry.setdefault("curve", {})[metric] = [{"step": s, "mean": m, "std": d} for s, m, d in points]
        entries.append(entry)
    budget = {k: v for k, v in asdict(config).items() if k not in ("results_json", "results_md", "notes_md")}
    return {"config": budget, "entries": entries, "verdict": verdicts(entries)}


def _model_size(c: dict[str, Any]) -> str:
    if c["rules_model"] == "scratch":
        return f"(built from scratch per SFT seed: {c.get('rules_scratch') or 'default sizes'})"
    return f"layers {c['rules_keep_layers']}"


def _per_rule_lines(summary: dict[str, Any]) -> list[str]:
    """Accuracy per rule (mean over seeds), head rules first: which rules an arm knows, keeps or loses."""
    from training.rule_world import HEAD_RULES, TAIL_RULES

    rows = [e for e in summary["entries"] if e.get("per_rule_accuracy")]
    if not rows:
        return []
    arms = [f"{e['dataset']}/{e['arm']}" for e in rows]
    lines = ["", "Accuracy per rule (mean over seeds):", "", "| rule | kind | " + " | ".join(arms) + " |"]
    lines.append("|---|---|" + "---|" * len(arms))
    for kind, names in (("head", HEAD_RULES), ("tail", TAIL_RULES)):
        for rule in names:
            cells = [f"{e['per_rule_accuracy'][rule]:.2f}" if rule in e["per_rule_accuracy"] else "-" for e in rows]
            lines.append(f"| {rule} | {kind} | " + " | ".join(cells) + " |")
    return lines


def _ci_cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if not s.get("ci"):
        return f"{s['mean']:.3f}"
    lo, hi = s["ci"]
    return f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _interval_lines(summary: dict[str, Any]) -> list[str]:
    rows = [e for e in summary["entries"] if "tail_rule_accuracy" in e]
    if not rows:
        return []
    lines = [
        "",
        "Tail- and head-rule accuracy with 95 % Student-t intervals over seeds (per-seed values in the JSON):",
        "",
        "| dataset | arm | n | tail-rule acc [95 % CI] | head-rule acc [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for e in rows:
        cells = [_ci_cell(e.get(metric)) for metric in ("tail_rule_accuracy", "head_rule_accuracy")]
        lines.append(f"| {e['dataset']} | {e['arm']} | {e['tail_rule_accuracy']['n']} | " + " | ".join(cells) + " |")
    return lines


def _cell(entry: dict[str, Any], metric: str) -> str:
    s = entry.get(metric)
    if not s:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def plot_study(runs: list[dict[str, Any]], config: AfrlStudyConfig) -> Path | None:
    """The curve PNG of the rule-world arms (`plot_png`), or None when no run has a curve."""
    if not config.plot_png:
        return None
    curves: dict[str, list[Any]] = {}
    for r in runs:
        if r["dataset"] == "rules" and r.get("curve"):
            curves.setdefault(r["arm"], []).append(r["curve"])
    title = f"rule world: mean ± std over seeds {config.seeds} (curve set of dev records, argmax grade)"
    return plot_curves(curves, Path(config.plot_png), title)


def render_results(summary: dict[str, Any], config: AfrlStudyConfig, plot: Path | None = None) -> str:
    c = summary["config"]
    datasets = c.get("datasets", ["rules", "trec"])

    def rl(steps: int) -> str:
        return (
            f"RL {steps} steps x {c['rl_prompts_per_step']} prompts x {c['num_generations']} completions (max "
            f"{c['max_completion_length']} tokens), lr {c['rl_learning_rate']}, KL {c['kl_coef']}, mu schedule "
            f"{c['sft_coef_schedule']}, reward scaling {c.get('scale_rewards', 'group')}, step rewards "
            f"{c.get('step_rewards') or 'default'}, engine {c.get('engine', 'trl')}"
        )

    budget = []
    if "rules" in datasets:
        budget.append(
            f"rule world {c['rules_train']} train / {c['rules_dev']} dev records per seed, seeds {c['seeds']}, "
            f"model `{c['rules_model']}` {_model_size(c)}, SFT {c['sft_max_steps']} steps x "
            f"{c['sft_batch_size']} (grade weight {c.get('sft_grade_loss_weight', 1.0)}); "
            + rl(c["rl_max_steps"])
            + f"; shared SFT model across seeds (seeds vary only RL): {c['shared_sft']}"
        )
    if "trec" in datasets:
        budget.append(
            f"TREC DL from `{c['trec_sft_model']}`, seeds {c['trec_seeds']}, {c['trec_train_records']} RL prompts; "
            + rl(c["trec_rl_max_steps"])
            + (", grade drawn first among the grade tokens" if c.get("grade_first") else "")
        )
    notes_hint = f"`{config.notes_md}` (appended below) or " if config.notes_md else ""
    lines = [
        "# Training results",
        "",
        "Generated by `afrl train study --config <study config>` (training/study.py); every number below comes",
        f"from `{config.results_json}`, which the same command writes. Do not edit by hand: edit",
        f"{notes_hint}the config, and re-run.",
        "",
        "## Mode balance: does the SFT auxiliary loss keep tail rules alive under RL?",
        "",
        "Arms (same RL budget each; at each seed every arm starts from that seed's SFT model): "
        + "; ".join(f"`{k}`: {v if v else 'SFT only'}" for k, v in config.arm_specs.items()),
        "",
        "Budget: " + ". ".join(budget) + ". Mean ± std over seeds.",
        "",
        "| dataset | arm | seeds run | tail-rule acc | head-rule acc | macro-F1 | accuracy | nDCG@10 "
        "| nDCG@10 (judged) | grade entropy | expl. consistency |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary["entries"]:
        cells = [_cell(e, m) for m in SUMMARY_METRICS]
        seeds = ", ".join(str(s) for s in e["seeds"])
        lines.append(f"| {e['dataset']} | {e['arm']} | {seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per-grade recall (mean over seeds):",
        "",
        "| dataset | arm | " + " | ".join(f"grade {g}" for g in range(4)) + " |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary["entries"]:
        rec = e.get("per_grade_recall", {})
        lines.append(
            f"| {e['dataset']} | {e['arm']} | "
            + " | ".join(f"{rec[str(g)]['mean']:.3f}" if str(g) in rec else "-" for g in range(4))
            + " |"
        )
    trained = [e for e in summary["entries"] if e.get("rl_train")]
    if trained:
        cols = ["reward", "frac_reward_zero_std", "grades/invalid", "completions/clipped_ratio", "sft_loss", "kl"]
        lines += [
            "",
            "RL training signals (means over steps and seeds; `frac_reward_zero_std` = share of groups whose "
            "completions all got the same reward, hence zero advantage):",
            "",
            "| dataset | arm | " + " | ".join(cols) + " | step rewards (" + " / ".join(STEP_KEYS) + ") |",
            "|---|---|" + "---|" * (len(cols) + 1),
        ]
        for e in trained:
            t = e["rl_train"]
            steps = " / ".join(f"{t[f'step_reward/{n}']:.2f}" for n in STEP_KEYS if f"step_reward/{n}" in t)
            lines.append(
                f"| {e['dataset']} | {e['arm']} | "
                + " | ".join(f"{t[c]:.3f}" if c in t else "-" for c in cols)
                + f" | {steps} |"
            )
    if "trec" not in {e["dataset"] for e in summary["entries"]}:
        lines += ["", "TREC DL arms: not run by this invocation (see the notes below)."]
    lines += _interval_lines(summary)
    lines += _per_rule_lines(summary)
    if plot is not None:
        rel = os.path.relpath(plot, Path(config.results_md).parent)
        lines += ["", f"![tail- and head-rule accuracy over RL steps, per arm]({rel})"]
    lines += ["", "### Verdict (computed)", ""]
    lines += [f"- {v}" for v in summary["verdict"]] or ["- no arms to compare"]
    notes = Path(config.notes_md) if config.notes_md else None
    if notes is not None and notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"
