"""The mode-balance study: does the SFT auxiliary loss keep rare (tail) rules alive under RL? (DESIGN.md 1)

Four arms with the same budget, each starting from the same SFT model:

* `sft`           - SFT only
* `grpo`          - SFT, then plain GRPO (TRL's one advantage per completion: `advantage_mode: completion`)
* `stepwise`      - SFT, then Stepwise-GRPO (one group-normalised advantage per step)
* `stepwise_sft`  - SFT, then Stepwise-GRPO + mu(t) * L_SFT (Mode-Balanced Optimisation)

on the rule world (a small model: the embedded SmolLM2 cut to a few layers, SFT trained here, several seeds) and
on TREC DL (the SmolLM2 SFT model of Training I, RL on its training queries, evaluated on the dev queries). Arms
are a YAML mapping (name -> RL overrides, `null` for SFT only), so an ablation (mu, KL, reward weights, budget) is
another config run by the same command. Every run lives in `output_dir/<dataset>/seed<k>/<arm>/` with `eval.json`;
a finished run is skipped, so re-running the command resumes the study. The command writes
`training/results/mode_balance.json` (mean and std over seeds per arm and dataset) and the table in
`training/RESULTS.md`; the best TREC arm by dev nDCG@10 is copied with its manifest to `best_teacher_dir`.

    nice -n 15 afrl train study --config training/configs/study_rules.yaml       # the rule-world study (CPU)
    afrl train study --config training/configs/study_trec.yaml                    # TREC arms (needs the SFT run)
    python -m training.study best-teacher runs/sft_smollm2_trec:runs/eval_sft_dl20dev/metrics.json \\
        runs/study_trec/trec/seed0/*  --out runs/best_teacher   # keep the best dev nDCG@10 for distillation
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ARMS: dict[str, dict[str, Any] | None] = {
    "sft": None,
    "grpo": {"advantage_mode": "completion", "sft_coef": 0.0},
    "stepwise": {"advantage_mode": "stepwise", "sft_coef": 0.0},
    "stepwise_sft": {"advantage_mode": "stepwise", "sft_coef": 0.5},
}

ENGINES = ("trl", "plain")


@dataclass
class AfrlStudyConfig:
    """Knobs of the study; the budget (records, steps, generations) is set here so it fits the machine."""

    output_dir: str = field(default="runs/study", metadata={"help": "one folder per dataset / seed / arm"})
    datasets: list[str] = field(default_factory=lambda: ["rules"], metadata={"help": "rules and/or trec"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "rule-world seeds"})
    shared_sft: bool = field(
        default=False,
        metadata={
            "help": "one SFT model, train and dev set (those of the first seed) for every seed, so that seeds vary "
            "only the RL phase (sampling, prompt order): the spread is RL's own, and SFT is paid once"
        },
    )
    trec_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "RL seeds on TREC"})
    arms: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "arm name -> RL overrides (null = SFT only); YAML mapping or JSON"}
    )
    results_json: str = field(default="training/results/mode_balance.json", metadata={"help": "summary JSON"})
    results_md: str = field(default="training/RESULTS.md", metadata={"help": "Markdown table (rewritten)"})
    notes_md: str | None = field(
        default="training/results/mode_balance_notes.md", metadata={"help": "analysis appended to RESULTS.md"}
    )
    explain_sample: int = field(default=8, metadata={"help": "explanations generated per evaluation"})
    explain_tokens: int = field(default=96, metadata={"help": "max tokens of an evaluated explanation"})
    # ------------------------------------------------------------------ rule world
    rules_model: str = field(
        default="default-base",
        metadata={
            "help": "base model of the rule-world SFT; `scratch`: a small LM built per seed (training/rule_lm.py)"
        },
    )
    rules_scratch: dict[str, int] | str | None = field(
        default=None, metadata={"help": "training.rule_lm.build_rule_lm sizes (hidden_size, num_layers, vocab_size)"}
    )
    rules_keep_layers: list[int] | None = field(default=None, metadata={"help": "layer subset (a small model)"})
    rules_instruction_file: str | None = field(default=None, metadata={"help": "guideline (default: contract's)"})
    rules_sft_model: str | None = field(
        default=None, metadata={"help": "reuse this SFT model folder (trained on the first seed's data) instead of SFT"}
    )
    rules_train: int = field(default=512, metadata={"help": "rule-world training records per seed"})
    rules_dev: int = field(default=512, metadata={"help": "rule-world dev records per seed (other seed)"})
    max_query_tokens: int = field(default=32, metadata={"help": "query token budget"})
    max_document_tokens: int = field(default=64, metadata={"help": "document token budget"})
    sft_max_steps: int = field(default=60, metadata={"help": "SFT steps (rule world)"})
    sft_batch_size: int = field(default=8, metadata={"help": "SFT batch size"})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "SFT learning rate"})
    sft_grade_loss_weight: float = field(
        default=1.0, metadata={"help": "weight of the grade token in the SFT loss (10-20 avoids majority collapse)"}
    )
    # ------------------------------------------------------------------ RL (the same budget for every RL arm)
    rl_max_steps: int = field(default=20, metadata={"help": "RL optimiser steps per arm"})
    rl_prompts_per_step: int = field(default=2, metadata={"help": "prompts per step (x num_generations)"})
    num_generations: int = field(default=4, metadata={"help": "completions per prompt (G)"})
    max_completion_length: int = field(default=80, metadata={"help": "completion token limit"})
    rl_learning_rate: float = field(default=2e-5, metadata={"help": "RL learning rate"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    kl_coef: float = field(default=0.0, metadata={"help": "KL to the reference (every RL arm unless overridden)"})
    scale_rewards: str = field(
        default="group", metadata={"help": "TRL's advantage scaling: group, batch or none (none keeps reward scale)"}
    )
    curve_every: int = field(
        default=0, metadata={"help": "RL steps between points of the rule-accuracy curve (0: none)"}
    )
    curve_head_records: int = field(
        default=256, metadata={"help": "head-rule dev records in the curve set (every tail-rule record is in it)"}
    )
    plot_png: str | None = field(
        default="training/results/mode_balance_curves.png", metadata={"help": "the curves' plot (rule world)"}
    )
    sft_coef_schedule: str = field(default="constant", metadata={"help": "mu(t) of arms with sft_coef > 0"})
    step_rewards: dict[str, float] | str | None = field(default=None, metadata={"help": "reward weights"})
    # ------------------------------------------------------------------ TREC DL
    trec_sft_model: str = field(default="runs/sft_smollm2_trec_balanced", metadata={"help": "the Training I SFT model"})
    trec_train: list[str] = field(
        default_factory=lambda: ["trec:../shared/data/trec-dl/dl21", "trec:../shared/data/trec-dl/dl20:train"],
        metadata={"help": "RL prompts (sources)"},
    )
    trec_train_records: int = field(default=256, metadata={"help": "seeded sample of RL prompts"})
    trec_dev_dir: str = field(default="../shared/data/trec-dl/dl20", metadata={"help": "dev TREC folder"})
    trec_dev_fraction: float = field(default=0.2, metadata={"help": "the dev split of Training I"})
    trec_split_seed: int = field(default=0, metadata={"help": "the dev split seed of Training I"})
    trec_rl_max_steps: int = field(default=10, metadata={"help": "RL steps per arm on TREC"})
    trec_lora_r: int = field(default=16, metadata={"help": "LoRA rank of the TREC RL arms (0: full)"})
    trec_lora_layers: list[int] | None = field(default=None, metadata={"help": "layers that get LoRA"})
    engine: str = field(
        default="trl",
        metadata={
            "help": "trl: TRL's SFTTrainer and GRPOTrainer (training/sft.py, training/rl/trainer.py; causal LMs); "
            "plain: the TRL-free loops (training/plain_sft.py, training/rl/loop.py), which also train a prefix LM "
            "as it is served and run where TRL is absent (the lent GPU machine)"
        },
    )
    device: str = field(default="auto", metadata={"help": "plain engine only: auto (cuda if present), cuda or cpu"})
    grade_first: bool = field(
        default=False,
        metadata={
            "help": "plain engine only: RL draws the first token among the grade tokens (the scorer's distribution); "
            "for a student distilled on grade logits alone, whose free first token is rarely a grade"
        },
    )
    render_only: bool = field(
        default=False, metadata={"help": "train and evaluate nothing: rewrite the results from finished runs"}
    )
    best_teacher_dir: str | None = field(default="runs/best_teacher", metadata={"help": "where the best teacher goes"})

    def __post_init__(self) -> None:
        if isinstance(self.arms, str):
            self.arms = json.loads(self.arms)
        if isinstance(self.step_rewards, str):
            self.step_rewards = json.loads(self.step_rewards)
        if isinstance(self.rules_scratch, str):
            self.rules_scratch = json.loads(self.rules_scratch)
        arms: dict[str, Any] = self.arms if isinstance(self.arms, dict) else DEFAULT_ARMS
        self.arms = dict(arms)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "plain" and "trec" in self.datasets and self.trec_lora_r > 0:
            raise ValueError("the plain engine trains all weights: set trec_lora_r: 0 (or engine: trl)")
        if self.engine != "plain" and self.grade_first:
            raise ValueError("grade_first needs engine: plain (TRL samples the whole vocabulary)")
        if self.engine == "plain" and self.rules_keep_layers:
            raise ValueError("the plain engine trains whole models: drop rules_keep_layers (or engine: trl)")
        unknown = set(self.datasets) - {"rules", "trec"}
        if unknown:
            raise ValueError(f"unknown datasets {sorted(unknown)}: use rules and/or trec")

    @property
    def arm_specs(self) -> dict[str, dict[str, Any] | None]:
        assert isinstance(self.arms, dict)
        return self.arms


# ----------------------------------------------------------------------------------------------- runs


def rules_records(config: AfrlStudyConfig, seed: int) -> tuple[list[Any], list[Any]]:
    from training.rule_world import generate_records

    return generate_records(config.rules_train, seed=seed), generate_records(config.rules_dev, seed=10_000 + seed)


def run_rules_sft(config: AfrlStudyConfig, seed: int, out: Path) -> Path:
    from afrl.contract import DEFAULT_INSTRUCTION

    if (out / "afrl.json").is_file():
        return out
    model = config.rules_model
    instruction = Path(config.rules_instruction_file).read_text().strip() if config.rules_instruction_file else None
    if model == "scratch":  # SFT seeds vary the initial weights too
        from training.rule_lm import save_rule_lm

        sizes = config.rules_scratch if isinstance(config.rules_scratch, dict) else {}
        model = str(save_rule_lm(out.parent / "init_model", seed=seed, instruction=instruction, **sizes))
    if config.engine == "plain":
        from training.plain_sft import train_sft_plain

        return train_sft_plain(
            model,
            rules_records(config, seed)[0],
            out,
            instruction=instruction or DEFAULT_INSTRUCTION,
            max_query_tokens=config.max_query_tokens,
            max_document_tokens=config.max_document_tokens,
            max_steps=config.sft_max_steps,
            batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            grade_weight=config.sft_grade_loss_weight,
            seed=seed,
            device=config.device,
            data=[f"rules:{config.rules_train}:{seed}"],
        )
    from training.config import AfrlSFTConfig
    from training.sft import train_sft

    sft = AfrlSFTConfig(
        output_dir=str(out),
        model=model,
        data=[f"rules:{config.rules_train}:{seed}"],
        keep_layers=config.rules_keep_layers,
        instruction_file=config.rules_instruction_file,
        max_query_tokens=config.max_query_tokens,
        max_document_tokens=config.max_document_tokens,
        lora_r=0,
        max_steps=config.sft_max_steps,
        per_device_train_batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        grade_loss_weight=config.sft_grade_loss_weight,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        logging_steps=10,
        # checkpoints, so that a study stopped mid-SFT resumes there (train_sft resumes from the last one)
        save_strategy="steps",
        save_steps=max(50, config.sft_max_steps // 6),
        save_total_limit=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
    )
    return train_sft(sft)


def rl_config(config: AfrlStudyConfig, init: Path, out: Path, seed: int, spec: dict[str, Any], trec: bool) -> Any:
    """The arm's RL settings: an `AfrlGRPOConfig` (TRL engine) or a `PlainRLConfig` (plain), from one mapping."""
    kw: dict[str, Any] = dict(
        output_dir=str(out),
        model=str(init),
        max_steps=config.trec_rl_max_steps if trec else config.rl_max_steps,
        per_device_train_batch_size=config.rl_prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.rl_learning_rate,
        temperature=config.temperature,
        kl_coef=config.kl_coef,
        scale_rewards=config.scale_rewards,
        sft_coef_schedule=config.sft_coef_schedule,
        step_rewards=dict(config.step_rewards) if isinstance(config.step_rewards, dict) else None,
        logging_steps=1,
        seed=seed,
    )
    if config.engine == "plain":
        from training.rl.loop import PlainRLConfig

        return PlainRLConfig.from_mapping(kw | {"device": config.device, "grade_first": config.grade_first} | spec)
    from training.rl.config import AfrlGRPOConfig

    kw.update(data=["study"], save_strategy="no", report_to="none", use_cpu=True, bf16=False)  # records: the study's
    if trec and config.trec_lora_r > 0:
        kw.update(lora_r=config.trec_lora_r, lora_layers=config.trec_lora_layers)
    kw.update(spec)
    return AfrlGRPOConfig(**kw)


def grade_entropy(predicted_distribution: dict[str, int]) -> float:
    """Entropy (nats) of the predicted-grade distribution: low when the model collapses onto a few grades."""
    total = sum(predicted_distribution.values())
    probs = [c / total for c in predicted_distribution.values() if c] if total else []
    return -sum(p * math.log(p) for p in probs)


def evaluate_model(config: AfrlStudyConfig, model_dir: Path, dataset: str, dev: list[Any] | None) -> dict[str, Any]:
    from afrl.scorer import load_scorer
    from training.data import TrecCollection
    from training.evaluate import evaluate_records, evaluate_trec, split_qids

    scorer = load_scorer(str(model_dir))
    if dataset == "rules":
        assert dev is not None
        m = evaluate_records(scorer, dev, explain_sample=config.explain_sample, explain_tokens=config.explain_tokens)
    else:
        coll = TrecCollection.load(config.trec_dev_dir)
        qids = split_qids(coll, "dev", config.trec_dev_fraction, config.trec_split_seed)
        m = evaluate_trec(
            scorer,
            config.trec_dev_dir,
            qids,
            explain_sample=config.explain_sample,
            explain_tokens=config.explain_tokens,
        )
    m["grade_entropy"] = grade_entropy(m["predicted_distribution"])
    return m


RL_SIGNALS = (
    "reward",
    "frac_reward_zero_std",
    "step_reward/grade",
    "step_reward/intent",
    "step_reward/evidence",
    "step_reward/reasoning",
    "step_reward/verdict",
    "grades/invalid",
    "grades/entropy",
    "sft_loss",
    "kl",
    "completions/clipped_ratio",
)


def rl_signals(train_log: Path) -> dict[str, float]:
    """Means over the RL steps of what explains an arm's outcome: how much reward signal there was (a group whose
    completions all score the same has zero advantage), malformed or truncated completions, the SFT loss, KL."""
    if not train_log.is_file():
        return {}
    steps = [e for e in json.loads(train_log.read_text()) if "loss" in e]
    out = {}
    for key in RL_SIGNALS:
        values = [float(e[key]) for e in steps if e.get(key) is not None]
        if values:
            out[key] = statistics.fmean(values)
    return out


def curve_callback(config: AfrlStudyConfig, rl: Any, init: Path, dev: list[Any] | None, run_dir: Path) -> Any:
    """The RuleCurve of one RL run: the curve set of `dev`, scored under the init model's own contract."""
    from transformers import AutoTokenizer

    from training.rl.rollouts import contract_builder
    from training.study_curve import CURVE_NAME, RuleCurve, curve_records

    assert dev is not None
    builder, scale = contract_builder(AutoTokenizer.from_pretrained(init), init, rl)
    records = curve_records(dev, config.curve_head_records)
    return RuleCurve(records, builder, scale, config.curve_every, run_dir / CURVE_NAME)


def run_arm(
    config: AfrlStudyConfig, dataset: str, seed: int, arm: str, init: Path, train: list[Any], dev: list[Any] | None
) -> dict[str, Any] | None:
    """Train (unless SFT only) and evaluate one arm; a finished run is read back, not redone."""
    from training.study_curve import read_curve

    run_dir = Path(config.output_dir) / dataset / f"seed{seed}" / arm
    done = run_dir / "eval.json"
    if done.is_file():
        log.info("%s done, skipping", run_dir)
        return dict(json.loads(done.read_text()))
    if config.render_only:
        log.warning("%s has not run: left out of the results", run_dir)
        return None
    spec = config.arm_specs[arm]
    # the SFT model's own numbers, shared by every seed that starts from it; kept out of a folder the study
    # does not own (a shipped model's)
    out_root = Path(config.output_dir).resolve()
    owned = init.resolve().is_relative_to(out_root)
    cache = init / "study_eval.json" if owned else out_root / dataset / f"{init.name}_eval.json"
    if spec is None and cache.is_file():
        model_dir, metrics = init, dict(json.loads(cache.read_text()))
    elif spec is None:
        model_dir = init
        metrics = evaluate_model(config, model_dir, dataset, dev)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(metrics))
    else:
        rl = rl_config(config, init, run_dir, seed, spec, dataset == "trec")
        callbacks = (
            [curve_callback(config, rl, init, dev, run_dir)] if dataset == "rules" and config.curve_every else []
        )
        if config.engine == "plain":
            from training.rl.loop import train_rl_plain

            model_dir = train_rl_plain(rl, train, callbacks=callbacks)
        else:
            from training.rl.trainer import train_rl

            model_dir = train_rl(rl, train, callbacks=callbacks)
        metrics = evaluate_model(config, model_dir, dataset, dev)
        metrics["rl_train"] = rl_signals(model_dir / "train_log.json")
        metrics["curve"] = read_curve(run_dir)
    metrics |= {"arm": arm, "dataset": dataset, "seed": seed, "model_dir": str(model_dir), "spec": spec}
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(metrics, indent=1))
    log.info(
        "%s seed %d %s: tail %s head %s macro-F1 %s",
        dataset,
        seed,
        arm,
        metrics.get("tail_rule_accuracy"),
        metrics.get("head_rule_accuracy"),
        metrics.get("macro_f1"),
    )
    return metrics


def run_study(config: AfrlStudyConfig) -> Path:
    import torch

    from training.study_report import write_results

    runs: list[dict[str, Any]] = []
    if "rules" in config.datasets:
        for seed in config.seeds:
            torch.manual_seed(seed)
            data_seed = config.seeds[0] if config.shared_sft else seed
            train, dev = rules_records(config, data_seed)
            if config.rules_sft_model:
                sft_dir = Path(config.rules_sft_model)
            else:
                sft_dir = Path(config.output_dir) / "rules" / f"seed{data_seed}" / "sft_model"
                if not config.render_only:
                    run_rules_sft(config, data_seed, sft_dir)
            for arm in config.arm_specs:
                if (result := run_arm(config, "rules", seed, arm, sft_dir, train, dev)) is not None:
                    runs.append(result)
                    write_results(runs, config)  # partial results survive an interrupted study
    if "trec" in config.datasets:
        from training.sources import load_sources, subset

        init = Path(config.trec_sft_model)
        if not (init / "afrl.json").is_file() and not config.render_only:
            raise FileNotFoundError(f"{init} has no afrl.json: run the Training I SFT first (or set trec_sft_model)")
        records = load_sources(config.trec_train, config.trec_dev_fraction, config.trec_split_seed)
        for seed in config.trec_seeds:
            train = subset(records, config.trec_train_records, seed)
            for arm in config.arm_specs:
                if (result := run_arm(config, "trec", seed, arm, init, train, None)) is not None:
                    runs.append(result)
                    write_results(runs, config)
        if config.best_teacher_dir and not config.render_only:
            trec_runs = [r for r in runs if r["dataset"] == "trec"]
            select_best_teacher([Path(r["model_dir"]) for r in trec_runs], Path(config.best_teacher_dir), trec_runs)
    return write_results(runs, config)


# ----------------------------------------------------------------------------------------------- best teacher


def _ndcg(model_dir: Path, known: dict[str, float]) -> float | None:
    if str(model_dir) in known:
        return known[str(model_dir)]
    for name in ("eval.json", "metrics.json", "eval/metrics.json"):
        for folder in (model_dir, model_dir.parent):
            p = folder / name
            if p.is_file():
                value = json.loads(p.read_text()).get("ndcg@10")
                return float(value) if value is not None else None
    return None


def select_best_teacher(
    candidates: list[Path], out: Path, runs: list[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Copy the candidate with the best dev nDCG@10 (and its manifest) to `out`; record why in teacher.json.

    A candidate's nDCG@10 comes from `runs` or from an `eval.json` / `metrics.json` beside or inside its folder.
    """
    from afrl.manifest import load_verified

    known = {str(r["model_dir"]): float(r["ndcg@10"]) for r in runs or [] if r.get("ndcg@10") is not None}
    scored = [(s, c) for c in candidates if (s := _ndcg(c, known)) is not None]
    if not scored:
        log.warning("no candidate has a dev nDCG@10; no teacher selected")
        return None
    best_score, best = max(scored, key=lambda x: x[0])
    load_verified(best)  # refuse to keep a folder whose manifest does not verify
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(best, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    record = {
        "selected": str(best),
        "ndcg@10": best_score,
        "candidates": {str(c): s for s, c in scored},
        "criterion": "dev nDCG@10 (TREC DL, reranking the first-stage run)",
    }
    (out / "teacher.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("best teacher %s (nDCG@10 %.4f) -> %s", best, best_score, out)
    return record


def config_from_yaml(path: Path, **overrides: Any) -> AfrlStudyConfig:
    """The study config of a YAML file and overrides, refusing unknown keys by name (a typo must not silently use
    a default)."""
    import dataclasses

    import yaml

    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(AfrlStudyConfig)}
    unknown = sorted(set(values | overrides) - known)
    if unknown:
        raise ValueError(f"{path}: unknown study settings {unknown}")
    return AfrlStudyConfig(**(values | overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    bt = sub.add_parser("best-teacher", help="keep the candidate model with the best dev nDCG@10")
    bt.add_argument(
        "candidates",
        nargs="+",
        help="MODEL_DIR[:METRICS_JSON]: a model folder and the `afrl eval` metrics.json of its dev run (default: an "
        "eval.json or metrics.json beside or inside the folder)",
    )
    bt.add_argument("--out", default="runs/best_teacher")
    rn = sub.add_parser(
        "run",
        help="run the study from its YAML without TRL's argument parser (the lent GPU machine has no TRL): "
        "the same as `afrl train study --config FILE`",
    )
    rn.add_argument("--config", required=True)
    rn.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override settings (VALUE read as YAML: --set plot_png=null seeds=[0,1])",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "run":
        from training.rl.rollouts import parse_overrides

        try:
            overrides = parse_overrides(args.set)
        except ValueError as e:
            parser.error(str(e))
        run_study(config_from_yaml(Path(args.config), **overrides))
        return 0
    folders, known = [], []
    for spec in args.candidates:
        folder, _, metrics = spec.partition(":")
        folders.append(Path(folder))
        if metrics:
            value = json.loads(Path(metrics).read_text()).get("ndcg@10")
            known.append({"model_dir": folder, "ndcg@10": value, "metrics": metrics})
    record = select_best_teacher(folders, Path(args.out), known)
    print(json.dumps(record, indent=1))
    return 0 if record else 1


if __name__ == "__main__":
    raise SystemExit(main())
