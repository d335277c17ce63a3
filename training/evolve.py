"""Instruction evolution: search for the guideline (system message) under which the current model grades best.

Method (DESIGN.md 5.4): a population of instructions is scored on a dev split with the current model (one forward
pass per pair: only the system message changes, the model does not); each member's error analysis (which rules, or
grades, it got wrong, the confusions, a few wrong examples) goes to a mutator that proposes edited instructions
(`training.mutators`: an LLM behind an OpenAI-compatible endpoint such as vLLM in production, a deterministic
line editor offline); children are scored, and the best `population_size` survive into the next generation
(elitist: the best score never falls). Every candidate's parent, mutation, generation and score is saved in
`lineage.json`; the winner (or the start, if a held-out check below rejects it) is written to `instruction.txt`,
carried into the next stage's config
(`next_stage.yaml`: `next_stage_config` with `instruction_file` pointing at the winner) and recorded in the
folder's manifest (`afrl.json`, whose instruction is the winner, with its sha256).

Selection on the dev split overfits it: with ~10 candidates on 300 pairs, the best dev score is partly luck (the
first real run gained 0.04 macro-F1 on dev and nothing on fresh pairs, training/README.md). So with `heldout_data`
the winner and the starting instruction are both scored on pairs the search never saw, and a paired bootstrap
(resampling records, or queries for nDCG@10) gives the probability that the winner is better there. Below
`confirm_probability` the starting instruction is carried forward instead, and the lineage says why.

Departure from prompt-optimisation papers: mutations see aggregated error analysis, not raw gradients or whole
transcripts, so a run on the rule world is reproducible and a production run stays within one LLM context.

    afrl train evolve --config training/configs/evolve_rules.yaml
    afrl train evolve --config training/configs/evolve_rules.yaml --mutator http \\
        --mutator_url http://127.0.0.1:8000/v1 --mutator_model Qwen/Qwen3-32B
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from afrl.contract import DEFAULT_INSTRUCTION, GradeResult, sha256_text
from training.config import AfrlDataArgs
from training.data import Record
from training.mutators import ErrorAnalysis, HttpMutator, Mutator, OfflineMutator

log = logging.getLogger(__name__)

# metric name -> its key in `metrics_from_results` (on dev records, nDCG@10 is the judged-pool figure)
METRICS = {"macro_f1": "macro_f1", "accuracy": "accuracy", "ndcg@10": "ndcg@10_judged"}


@dataclass
class AfrlEvolveConfig(AfrlDataArgs):
    """Instruction evolution on `dev_data` with `model`; `instruction_file` is the starting instruction."""

    output_dir: str = field(default="runs/evolve", metadata={"help": "lineage, winner, next-stage config, manifest"})
    population_size: int = field(default=4, metadata={"help": "instructions kept per generation"})
    generations: int = field(default=3, metadata={"help": "rounds of mutation and selection"})
    children_per_parent: int = field(default=2, metadata={"help": "mutations asked of the mutator per parent"})
    metric: str = field(default="macro_f1", metadata={"help": "dev metric to maximise: " + ", ".join(METRICS)})
    max_dev_records: int | None = field(default=200, metadata={"help": "seeded sample of the dev split"})
    seed_instructions: list[str] = field(
        default_factory=list, metadata={"help": "more instruction files in the first population"}
    )
    mutator: str = field(default="offline", metadata={"help": "offline (deterministic) or http (OpenAI-compatible)"})
    mutator_url: str | None = field(default=None, metadata={"help": "http mutator base URL, e.g. http://host:8000/v1"})
    mutator_model: str | None = field(default=None, metadata={"help": "model name the endpoint serves"})
    mutator_api_key_env: str = field(
        default="AFRL_MUTATOR_API_KEY", metadata={"help": "environment variable holding the endpoint's API key"}
    )
    mutator_temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the http mutator"})
    next_stage_config: str | None = field(
        default=None, metadata={"help": "YAML of the next stage; written to next_stage.yaml with the winner"}
    )
    next_stage_output_dir: str | None = field(
        default=None, metadata={"help": "output_dir written into next_stage.yaml (so it does not reuse the old one)"}
    )
    batch_size: int = field(default=16, metadata={"help": "scoring batch size"})
    heldout_data: list[str] = field(
        default_factory=list,
        metadata={"help": "pairs the search never sees, to confirm the winner on (e.g. rules:300:8); empty: no check"},
    )
    max_heldout_records: int | None = field(default=300, metadata={"help": "seeded sample of the held-out split"})
    confirm_probability: float = field(
        default=0.9,
        metadata={"help": "bootstrap probability that the winner beats the start on held-out pairs, to carry it"},
    )

    def __post_init__(self) -> None:
        if not self.dev_data:
            raise ValueError("set `dev_data` to the split the instructions are scored on (e.g. rules:300:7)")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if self.population_size < 1 or self.generations < 0 or self.children_per_parent < 1:
            raise ValueError("population_size and children_per_parent must be >= 1, generations >= 0")
        if self.mutator not in ("offline", "http"):
            raise ValueError(f"mutator {self.mutator!r}: use offline or http")
        if not 0.0 <= self.confirm_probability <= 1.0:
            raise ValueError("confirm_probability must be in [0, 1]")
        if self.mutator == "http" and not (self.mutator_url and self.mutator_model):
            raise ValueError("the http mutator needs mutator_url (e.g. http://127.0.0.1:8000/v1) and mutator_model")


class InstructionScorer(Protocol):
    """What evolution needs of a scorer: grade results under a given instruction (TorchScorer.score)."""

    def score(self, pairs: Any, instruction: str | None = None) -> list[GradeResult]: ...


@dataclass
class Candidate:
    id: str
    instruction: str
    parent: str | None
    mutation: str
    generation: int
    score: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    analysis: ErrorAnalysis | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "mutation": self.mutation,
            "generation": self.generation,
            "score": self.score,
            "metrics": self.metrics,
            "errors": self.analysis.to_dict() if self.analysis else None,
            "instruction_sha256": sha256_text(self.instruction),
            "instruction": self.instruction,
        }


def evaluate_instruction(
    scorer: InstructionScorer, records: list[Record], instruction: str, metric: str, n_examples: int = 4
) -> tuple[float, dict[str, Any], ErrorAnalysis]:
    """(score, metrics, error analysis) of one instruction on the dev records."""
    from training.evaluate import metrics_from_results

    results = scorer.score([(r.query, r.document) for r in records], instruction=instruction)
    n_grades = len(results[0].probabilities)
    metrics = metrics_from_results(records, results, n_grades, ranking=metric == "ndcg@10")
    score = float(metrics[METRICS[metric]])
    analysis = ErrorAnalysis(metric=metric, score=score, total=len(records))
    for r, res in zip(records, results, strict=True):
        key = r.rule or f"grade {r.grade}"
        analysis.seen[key] += 1
        if res.grade != r.grade:
            analysis.wrong[key] += 1
            analysis.confusions[(r.grade, res.grade)] += 1
            if len(analysis.examples) < n_examples:
                analysis.examples.append(
                    {"key": key, "query": r.query, "document": r.document, "gold": r.grade, "predicted": res.grade}
                )
    keep = ("accuracy", "macro_f1", "ndcg@10_judged", "head_rule_accuracy", "tail_rule_accuracy", "per_rule_accuracy")
    return score, {k: metrics[k] for k in keep if k in metrics}, analysis


def heldout_check(
    scorer: InstructionScorer,
    records: list[Record],
    start: str,
    winner: str,
    metric: str,
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Both instructions on held-out records, and a paired bootstrap of the winner's gain there.

    Resampling unit: the query for nDCG@10 (resampled queries get fresh ids so duplicates stay separate), else the
    record. `p_better` is the share of draws in which the winner scores strictly higher.
    """
    import random
    from dataclasses import replace

    from training.evaluate import metrics_from_results

    pairs = [(r.query, r.document) for r in records]
    results = {name: scorer.score(pairs, instruction=text) for name, text in (("start", start), ("winner", winner))}
    n_grades = len(results["start"][0].probabilities)
    ranking = metric == "ndcg@10"

    def value(idx: list[int], which: str, recs: list[Record]) -> float:
        metrics = metrics_from_results(recs, [results[which][i] for i in idx], n_grades, ranking=ranking)
        return float(metrics[METRICS[metric]])

    units: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        units.setdefault((r.qid or r.query) if ranking else str(i), []).append(i)
    keys = sorted(units)
    everything = list(range(len(records)))
    start_score, winner_score = value(everything, "start", records), value(everything, "winner", records)
    rng = random.Random(seed)
    gains = []
    for _ in range(draws):
        idx: list[int] = []
        recs: list[Record] = []
        for n, key in enumerate(rng.choices(keys, k=len(keys))):
            idx.extend(units[key])
            recs.extend(replace(records[i], qid=f"{key}#{n}") for i in units[key])
        gains.append(value(idx, "winner", recs) - value(idx, "start", recs))
    gains.sort()
    return {
        "records": len(records),
        "start_score": start_score,
        "winner_score": winner_score,
        "gain": winner_score - start_score,
        "gain_90ci": [gains[int(0.05 * draws)], gains[int(0.95 * draws) - 1]],
        "p_better": sum(g > 0 for g in gains) / draws,
        "draws": draws,
    }


def make_mutator(config: AfrlEvolveConfig) -> Mutator:
    if config.mutator == "http":
        return HttpMutator(
            url=str(config.mutator_url),
            model=str(config.mutator_model),
            api_key_env=config.mutator_api_key_env,
            temperature=config.mutator_temperature,
        )
    return OfflineMutator()


def evolve(
    scorer: InstructionScorer,
    records: list[Record],
    initial: list[str],
    mutator: Mutator,
    config: AfrlEvolveConfig,
) -> tuple[Candidate, dict[str, Any]]:
    """Run the evolution; returns (winner, lineage)."""
    candidates: dict[str, Candidate] = {}
    seen: set[str] = set()

    def add(instruction: str, parent: str | None, mutation: str, generation: int) -> Candidate | None:
        digest = sha256_text(instruction.strip())
        if digest in seen:  # a text already scored (any generation) is never scored again
            return None
        seen.add(digest)
        c = Candidate(f"g{generation}-{len(candidates)}", instruction.strip(), parent, mutation, generation)
        c.score, c.metrics, c.analysis = evaluate_instruction(scorer, records, c.instruction, config.metric)
        candidates[c.id] = c
        log.info("%s (%s <- %s): %s = %.4f", c.id, mutation, parent, config.metric, c.score)
        return c

    def rank(cs: list[Candidate]) -> list[Candidate]:  # best first; ties: the older, then the shorter
        return sorted(cs, key=lambda c: (-c.score, c.generation, len(c.instruction), c.id))

    population = rank([c for i, text in enumerate(initial) if (c := add(text, None, f"initial {i}", 0))])
    population = population[: config.population_size]
    history = [{"generation": 0, "population": [c.id for c in population], "best_score": population[0].score}]
    for generation in range(1, config.generations + 1):
        children: list[Candidate] = []
        for parent in population:
            assert parent.analysis is not None
            for m in mutator.mutate(parent.instruction, parent.analysis, config.children_per_parent):
                if (child := add(m.instruction, parent.id, m.description, generation)) is not None:
                    children.append(child)
        population = rank(population + children)[: config.population_size]
        history.append(
            {
                "generation": generation,
                "children": [c.id for c in children],
                "population": [c.id for c in population],
                "best_score": population[0].score,
            }
        )
        if not children:
            log.info("generation %d: the mutator proposed nothing new; stopping", generation)
            break
        if population[0].score >= 1.0:
            break
    best = population[0]
    initial_best = rank([c for c in candidates.values() if c.generation == 0])[0]
    lineage = {
        "metric": config.metric,
        "dev_records": len(records),
        "initial": initial_best.id,
        "initial_score": initial_best.score,
        "best": best.id,
        "best_score": best.score,
        "path": _ancestry(best, candidates),
        "generations": history,
        "candidates": [c.to_dict() for c in candidates.values()],
    }
    return best, lineage


def _ancestry(best: Candidate, candidates: dict[str, Candidate]) -> list[dict[str, Any]]:
    """The winner's line of descent, oldest first: which mutation led where."""
    path, c = [], best
    while c is not None:
        path.append({"id": c.id, "mutation": c.mutation, "score": c.score})
        c = candidates[c.parent] if c.parent else None  # type: ignore[assignment]
    return path[::-1]


def write_next_stage(config: AfrlEvolveConfig, instruction_path: Path, out: Path, note: str) -> Path | None:
    """`next_stage.yaml`: the next stage's config with `instruction_file` set to the evolved instruction."""
    import yaml

    if not config.next_stage_config:
        return None
    data = yaml.safe_load(Path(config.next_stage_config).read_text()) or {}
    data["instruction_file"] = str(instruction_path)
    if config.next_stage_output_dir:
        data["output_dir"] = config.next_stage_output_dir
    path = out / "next_stage.yaml"
    header = f"# {config.next_stage_config} with the evolved instruction ({note}); written by afrl train evolve\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def run_evolve(
    config: AfrlEvolveConfig, scorer: InstructionScorer | None = None, mutator: Mutator | None = None
) -> Path:
    """Evolve the instruction; write lineage.json, instruction.txt, next_stage.yaml and afrl.json."""
    from afrl.contract import GradeScale, PromptBuilder
    from afrl.manifest import Manifest
    from afrl.scorer import load_scorer
    from training.sources import load_sources, subset

    if scorer is None:
        scorer = load_scorer(config.model, batch_size=config.batch_size)

    def sample(specs: list[str], n: int | None, name: str) -> list[Record]:
        records = subset(load_sources(specs, config.dev_fraction, config.split_seed), n, config.split_seed)
        if not records:
            raise ValueError(f"{name} {specs} gave no records")
        return records

    records = sample(config.dev_data, config.max_dev_records, "dev_data")
    log.info(
        "evolving on %d dev records, rules/grades %s", len(records), dict(Counter(r.rule or r.grade for r in records))
    )
    start = Path(config.instruction_file).read_text() if config.instruction_file else DEFAULT_INSTRUCTION
    initial = [start, *(Path(p).read_text() for p in config.seed_instructions)]
    best, lineage = evolve(scorer, records, initial, mutator or make_mutator(config), config)
    carried = best.instruction
    note = f"dev {config.metric} {lineage['initial_score']:.4f} -> {best.score:.4f}"
    if config.heldout_data:
        held = sample(config.heldout_data, config.max_heldout_records, "heldout_data")
        start_text = next(c["instruction"] for c in lineage["candidates"] if c["id"] == lineage["initial"])
        check = heldout_check(scorer, held, start_text, best.instruction, config.metric)
        check["confirmed"] = check["p_better"] >= config.confirm_probability
        lineage["heldout"] = check
        note += f"; held-out {check['start_score']:.4f} -> {check['winner_score']:.4f}"
        note += f", p_better {check['p_better']:.2f}"
        if not check["confirmed"]:
            carried = start_text
            note += f" < {config.confirm_probability}: the starting instruction is carried"
            log.warning("the dev winner is not confirmed on held-out pairs (%s)", note)
    lineage["carried"] = lineage["best"] if carried == best.instruction else lineage["initial"]

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
    instruction_path = out / "instruction.txt"
    instruction_path.write_text(carried + "\n")
    next_stage = write_next_stage(config, instruction_path, out, note)
    builder = getattr(scorer, "builder", None)
    if isinstance(builder, PromptBuilder):  # a real scorer: record the winner in a manifest the next stage can check
        manifest = Manifest.for_builder(
            PromptBuilder(builder.tokenizer, carried, builder.max_query_tokens, builder.max_document_tokens),
            GradeScale(),
            kind="evolve",
            base_model=config.model,
            provenance={"dev_data": config.dev_data, "metric": config.metric, "mutator": config.mutator},
            extra={
                "initial_score": lineage["initial_score"],
                "best_score": best.score,
                "best_metrics": best.metrics,
                "heldout": lineage.get("heldout"),
                "carried": lineage["carried"],
                "lineage": "lineage.json",
                "next_stage": next_stage.name if next_stage else None,
            },
        )
        manifest.write(out)
    log.info("carried instruction %s (%s) -> %s", lineage["carried"], note, instruction_path)
    return out
