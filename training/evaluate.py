"""Evaluation of an AFRL scorer (DESIGN.md 5.6): ranking, classification, calibration, explanations, rules.

Two ways to rank, as the TREC DL data README describes: (a) rerank the first-stage run (`bm25_top100.run`) per
query and score the new order against the full qrels, unjudged documents counting as 0 (the number papers
report; BM25's own order is the reference row); (b) the fully judged pool: rank every judged pair that has a text
(for JSONL or rule-world records, the records grouped by `qid`). The judged pool's qrels are the pool itself,
so the ideal ranking is reachable, and a group without any grade above 0 is left out (every order of it is
equally good). Classification metrics use the judged pairs; the predicted grade is the argmax of the grade
distribution, and its probability is the confidence that ECE calibrates. Explanation consistency is measured
on a small seeded sample generated greedily by the torch model and checked by `afrl.contract.parse_completion`:
`consistency` as /explain decodes it (`afrl.explanation_constraint`: the contract's labels in order, Evidence
quoted from the passage, Verdict = the first token), `consistency_free` without the constraint (the model alone).

Library entry points (the RL study calls these): `evaluate_records`, `evaluate_trec`, `write_report`.
The command line is `afrl eval` (training/eval_cli.py).
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from afrl.contract import GradeResult, parse_completion, result_from_logits
from afrl.explanation_constraint import ExplanationConstraint
from afrl.prefix_lm import end_token_ids, greedy_continuation
from afrl.scorer import TorchScorer
from training.data import Record, TrecCollection, split_by_query
from training.metrics import (
    classification_metrics,
    expected_calibration_error,
    per_rule_accuracy,
    ranking_metrics,
    shuffled_ranking_metrics,
)

log = logging.getLogger(__name__)

RUN_TAG = "afrl"


# ---------------------------------------------------------------------------------------------------- scoring


def score_pairs(
    scorer: TorchScorer, pairs: Sequence[tuple[str, str]], instruction: str | None = None, desc: str = "scoring"
) -> list[GradeResult]:
    """Grade results of (query, document) pairs, with a progress bar.

    Prompts are sorted by length once over the whole set and handed to the scorer in length-homogeneous chunks,
    so batches waste little padding and the bar advances as chunks finish.
    """
    import torch
    from tqdm.auto import tqdm

    if not pairs:
        return []
    if hasattr(scorer, "grade_results"):  # a calibrated teacher (training.teacher_eval): no prompts, no logits
        return list(scorer.grade_results(pairs))
    prompts = scorer.builder.build_many(pairs, instruction)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    logits = torch.empty((len(prompts), len(scorer.grade_ids)), dtype=torch.float32)
    chunk = max(1, scorer.batch_size) * 4
    with tqdm(total=len(prompts), desc=desc, unit="pair") as bar:
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            logits[idx] = scorer.logits_for_prompts([prompts[i] for i in idx])
            bar.update(len(idx))
    return [result_from_logits(row.tolist()) for row in logits]


def explanation_consistency(
    scorer: TorchScorer,
    records: Sequence[Record],
    sample: int,
    instruction: str | None = None,
    max_new_tokens: int = 128,
    seed: int = 0,
) -> tuple[float | None, list[dict[str, Any]]]:
    """Fraction of greedy explanations that parse as consistent, over a seeded sample of the records. Each is
    decoded as the service's /explain writes it (`afrl.prefix_lm.greedy_continuation`): the argmax grade first,
    then greedy tokens kept to the contract's shape (`afrl.explanation_constraint`: labels, quote, Verdict), for
    causal and prefix LMs alike. Each sample also carries the free decoding (`free_consistent`), the model's rate."""
    import torch
    from tqdm.auto import tqdm

    if sample <= 0 or not records:
        return None, []
    chosen = random.Random(seed).sample(list(records), min(sample, len(records)))
    device = next(scorer.model.parameters()).device
    eos = end_token_ids(scorer.model, scorer.tokenizer)
    samples = []
    for r in tqdm(chosen, desc="explaining", unit="pair"):
        prompt = scorer.builder.build(r.query, r.document, instruction)
        ids = torch.tensor([prompt.input_ids], device=device)
        decoded = {}
        for name, constraint in (
            ("constrained", ExplanationConstraint.for_prompt(scorer.tokenizer, prompt, budget=max_new_tokens)),
            ("free", None),
        ):
            with torch.inference_mode():
                new = greedy_continuation(scorer.model, ids, max_new_tokens, eos, scorer.grade_ids, constraint)
            text = scorer.tokenizer.decode(new, skip_special_tokens=True)
            decoded[name] = (text, parse_completion(text, r.document, scorer.scale))
        text, parsed = decoded["constrained"]
        free_text, free = decoded["free"]
        samples.append(
            {
                "id": r.id,
                "gold": r.grade,
                "rule": r.rule,
                "completion": text,
                "consistent": parsed.consistent,
                "errors": parsed.errors,
                "free_completion": free_text,
                "free_consistent": free.consistent,
            }
        )
    return sum(s["consistent"] for s in samples) / len(samples), samples


# ---------------------------------------------------------------------------------------------------- records


def _group_key(r: Record) -> str:
    return r.qid or r.query


def judged_pool_ranking(records: Sequence[Record], scores: Sequence[float]) -> dict[str, Any]:
    """nDCG@10 / MRR@10 / MAP of the records ranked by score within each query group (the judged pool)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    scored: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for i, (r, s) in enumerate(zip(records, scores, strict=True)):
        key = r.docid or r.id
        qrels[_group_key(r)][key] = r.grade
        scored[_group_key(r)].append((-s, i, key))  # ties keep the input order
    keep = [q for q, docs in qrels.items() if any(g > 0 for g in docs.values())]
    if not keep:
        return {}
    ranking = {q: [d for _, _, d in sorted(scored[q])] for q in keep}
    m = ranking_metrics({q: qrels[q] for q in keep}, ranking)
    return {
        "ndcg@10_judged": m["ndcg@10"],
        "mrr@10_judged": m["mrr@10"],
        "map_judged": m["map"],
        "judged_queries": m["queries"],
    }


def metrics_from_results(
    records: Sequence[Record], results: Sequence[GradeResult], n_grades: int, ranking: bool = True
) -> dict[str, Any]:
    """Every metric that needs only the records and their grade results (no model)."""
    gold = [r.grade for r in records]
    predicted = [res.grade for res in results]
    out: dict[str, Any] = {"n_judged": len(records)}
    out |= classification_metrics(gold, predicted, n_grades)
    confidence = [res.probabilities[res.grade] for res in results]
    out["ece"] = expected_calibration_error(confidence, [g == p for g, p in zip(gold, predicted, strict=True)])
    if ranking:
        out |= judged_pool_ranking(records, [res.score for res in results])
    if any(r.rule for r in records):
        from training.rule_world import HEAD_RULES

        out |= per_rule_accuracy([r.rule for r in records], gold, predicted, head=HEAD_RULES)
    return out


def evaluate_records(
    scorer: TorchScorer,
    records: Sequence[Record],
    explain_sample: int = 0,
    instruction: str | None = None,
    explain_tokens: int = 128,
) -> dict[str, Any]:
    """Classification, calibration, judged-pool ranking (records grouped by qid), per-rule accuracy for
    rule-world records, and explanation consistency on `explain_sample` records."""
    if not records:
        raise ValueError("no records to evaluate")
    results = score_pairs(scorer, [(r.query, r.document) for r in records], instruction)
    out: dict[str, Any] = {"mode": "records"}
    out |= metrics_from_results(records, results, len(scorer.scale.labels))
    out |= _consistency(scorer, records, explain_sample, instruction, explain_tokens)
    return out


def _consistency(
    scorer: TorchScorer, records: Sequence[Record], sample: int, instruction: str | None, tokens: int
) -> dict[str, Any]:
    fraction, samples = explanation_consistency(scorer, records, sample, instruction, tokens)
    free = sum(s["free_consistent"] for s in samples) / len(samples) if samples else None
    return {
        "consistency": fraction,
        "consistency_free": free,
        "consistency_n": len(samples),
        "explanation_samples": samples,
    }


# ---------------------------------------------------------------------------------------------------- TREC


def split_qids(coll: TrecCollection, part: str = "all", dev_fraction: float = 0.2, split_seed: int = 0) -> list[str]:
    """The queries of a TREC folder's train or dev part, chosen exactly as `training.sources.load_source` does
    for `trec:DIR:train|dev` (the same candidate list and `split_by_query`), so the eval holds out what SFT did."""
    qids = [q for q in coll.queries if q in coll.qrels]
    if part in ("", "all"):
        return sorted(qids)
    train, dev = split_by_query(qids, dev_fraction, split_seed)
    if part == "train":
        return train
    if part == "dev":
        return dev
    raise ValueError(f"split {part!r}: use all, train or dev")


def qids_from_spec(spec: str, dev_fraction: float = 0.2, split_seed: int = 0) -> list[str]:
    """`trec:DIR[:train|:dev]` (the split of that folder) or a file with one query id per line (first column)."""
    kind, _, rest = spec.partition(":")
    if kind == "trec":
        directory, _, part = rest.partition(":")
        return split_qids(TrecCollection.load(directory), part or "all", dev_fraction, split_seed)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--qids-from {spec!r}: not trec:DIR[:train|:dev] and not a file of query ids")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def rerank(candidates: Sequence[str], scores: dict[str, float]) -> tuple[list[str], list[float]]:
    """The candidates by model score (ties keep the first-stage order); candidates without a score (no text)
    follow in first-stage order with scores below every model score, so rank and score agree in the run file."""
    scored = sorted((d for d in candidates if d in scores), key=lambda d: -scores[d])
    rest = [d for d in candidates if d not in scores]
    floor = min((scores[d] for d in scored), default=0.0)
    return scored + rest, [scores[d] for d in scored] + [floor - 1.0 - i for i in range(len(rest))]


def write_run(path: str | Path, run: dict[str, tuple[list[str], list[float]]], tag: str = RUN_TAG) -> Path:
    """TREC run format: `qid Q0 docid rank score tag`, ranks from 1."""
    path = Path(path)
    with path.open("w") as f:
        for qid, (docs, scores) in run.items():
            for rank, (docid, score) in enumerate(zip(docs, scores, strict=True), 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
    return path


def reference_metrics(coll: TrecCollection, qids: Sequence[str]) -> dict[str, Any]:
    """The rows every rerank figure is read against: the first-stage run's own order (`bm25_*`, and per query) and
    the same candidates shuffled (`shuffled_*`, chance level, mean of 50 seeded shuffles)."""
    qids = [q for q in qids if q in coll.run]
    if not qids:
        raise ValueError(f"none of the selected queries is in the first-stage run of {coll.name}")
    qrels = {q: coll.qrels[q] for q in qids}
    first_stage = {q: [d for d, _ in coll.run[q]] for q in qids}
    bm25 = ranking_metrics(qrels, first_stage, per_query=True)
    shuffled = shuffled_ranking_metrics(qrels, first_stage)
    keys = ("ndcg@10", "mrr@10", "map")
    per_query = {q: {"bm25_ndcg@10": v["ndcg@10"]} for q, v in bm25["per_query"].items()}
    return (
        {f"bm25_{k}": bm25[k] for k in keys} | {f"shuffled_{k}": shuffled[k] for k in keys} | {"per_query": per_query}
    )


def evaluate_trec(
    scorer: TorchScorer,
    trec_dir: str | Path,
    qids: Iterable[str] | None = None,
    run_file: str | Path | None = None,
    explain_sample: int = 0,
    instruction: str | None = None,
    run_out: str | Path | None = None,
    explain_tokens: int = 128,
) -> dict[str, Any]:
    """Rerank the first-stage run and rank the judged pool of a TREC folder; all metrics in one dict.

    Every (query, passage) pair is scored once, whether it is a run candidate, a judged pair or both. With
    `run_out`, the reranked run is written there in TREC format.
    """
    coll = TrecCollection.load(trec_dir, run_file)  # refuses a missing run_file
    known = split_qids(coll)
    if qids is None:
        selected = known
    else:
        selected = sorted(set(qids))
        unknown = sorted(set(selected) - set(known))
        if unknown:
            raise ValueError(f"query ids without a query text or qrels in {trec_dir}: {', '.join(unknown[:10])}")
    if not selected:
        raise ValueError(f"no judged queries selected in {trec_dir}")
    judged = coll.judged_records(selected)
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    for r in judged:
        pairs[(str(r.qid), str(r.docid))] = (r.query, r.document)
    in_run = [q for q in selected if q in coll.run]
    for q in in_run:
        for docid, _ in coll.run[q]:
            text = coll.passages.get(docid)
            if text:
                pairs[(q, docid)] = (coll.queries[q], text)
    keys = list(pairs)
    results = dict(zip(keys, score_pairs(scorer, [pairs[k] for k in keys], instruction), strict=True))

    out: dict[str, Any] = {"mode": "trec", "trec_dir": str(trec_dir), "queries": len(selected)}
    out["pairs_scored"] = len(keys)
    if in_run:
        qrels = {q: coll.qrels[q] for q in in_run}
        reranked: dict[str, tuple[list[str], list[float]]] = {}
        unscored = 0
        for q in in_run:
            candidates = [d for d, _ in coll.run[q]]
            scores = {d: results[(q, d)].score for d in candidates if (q, d) in results}
            unscored += len(candidates) - len(scores)
            reranked[q] = rerank(candidates, scores)
        model = ranking_metrics(qrels, {q: docs for q, (docs, _) in reranked.items()}, per_query=True)
        out |= {k: model[k] for k in ("ndcg@10", "mrr@10", "map")}
        out |= reference_metrics(coll, in_run)
        out["rerank_queries"] = model["queries"]
        out["unscored_run_docs"] = unscored
        out["per_query"] = {
            q: {"ndcg@10": model["per_query"][q]["ndcg@10"], **out["per_query"][q]} for q in model["per_query"]
        }
        if unscored:
            log.warning("%d run candidates have no passage text; they keep their first-stage order last", unscored)
        if run_out is not None:
            write_run(run_out, reranked)
    else:
        log.warning("no first-stage run for the selected queries in %s: reporting the judged pool only", trec_dir)
    if judged:
        judged_results = [results[(str(r.qid), str(r.docid))] for r in judged]
        out |= metrics_from_results(judged, judged_results, len(scorer.scale.labels))
        out |= _consistency(scorer, judged, explain_sample, instruction, explain_tokens)
    return out


# ---------------------------------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def render_report(metrics: dict[str, Any]) -> str:
    """A readable Markdown summary of a metrics dict."""
    lines = ["# AFRL evaluation", ""]
    for key in ("model", "data", "mode", "queries", "n_judged", "pairs_scored"):
        if key in metrics:
            lines.append(f"- {key}: {_fmt(metrics[key])}")
    lines += ["", "## Ranking", "", "| metric | model | BM25 | BM25 shuffled |", "|---|---|---|---|"]
    for key, label in (("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10 (grade >= 2)"), ("map", "MAP (grade >= 2)")):
        if key in metrics or "bm25_" + key in metrics:
            refs = f"{_fmt(metrics.get('bm25_' + key))} | {_fmt(metrics.get('shuffled_' + key))}"
            lines.append(f"| {label}, rerank first-stage run | {_fmt(metrics.get(key))} | {refs} |")
    for key, label in (("ndcg@10_judged", "nDCG@10"), ("mrr@10_judged", "MRR@10"), ("map_judged", "MAP")):
        if key in metrics:
            lines.append(f"| {label}, judged pool | {_fmt(metrics[key])} | - | - |")
    classification = [
        k for k in ("accuracy", "macro_f1", "ece", "consistency", "consistency_free", "consistency_n") if k in metrics
    ]
    if classification:
        lines += ["", "## Classification (judged pairs)", "", "| metric | value |", "|---|---|"]
    for key in classification:
        lines.append(f"| {key} | {_fmt(metrics[key])} |")
    if "per_grade_recall" in metrics:
        grades = list(metrics["per_grade_recall"])
        lines += ["", "| grade | recall | gold | predicted |", "|---|---|---|---|"]
        for g in grades:
            lines.append(
                f"| {g} | {_fmt(metrics['per_grade_recall'][g])} | {metrics['gold_distribution'][g]} "
                f"| {metrics['predicted_distribution'][g]} |"
            )
        lines += ["", "Confusion matrix (rows gold, columns predicted):", ""]
        lines += ["| gold \\ pred | " + " | ".join(grades) + " |", "|---" * (len(grades) + 1) + "|"]
        for g, row in zip(grades, metrics["confusion_matrix"], strict=True):
            lines.append(f"| {g} | " + " | ".join(str(x) for x in row) + " |")
    if metrics.get("per_rule_accuracy"):
        from training.rule_world import HEAD_RULES

        lines += ["", "## Per rule (rule world)", ""]
        lines.append(
            f"head-rule accuracy {_fmt(metrics.get('head_rule_accuracy'))}, "
            f"tail-rule accuracy {_fmt(metrics.get('tail_rule_accuracy'))}"
        )
        lines += ["", "| rule | head/tail | pairs | accuracy |", "|---|---|---|---|"]
        for rule, acc in metrics["per_rule_accuracy"].items():
            kind = "head" if rule in HEAD_RULES else "tail"
            lines.append(f"| {rule} | {kind} | {metrics['per_rule_count'][rule]} | {_fmt(acc)} |")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """`metrics.json`, `report.md`, and `explanations.jsonl` (the generated sample) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics)
    samples = metrics.pop("explanation_samples", None) or []
    if samples:
        with (out / "explanations.jsonl").open("w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_report(metrics))
    return out
