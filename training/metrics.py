"""Evaluation metrics without a model: ranking metrics through ir_measures, classification and calibration.

Ranking (DESIGN.md 5.6) uses ir_measures (pytrec_eval underneath), so nDCG is trec_eval's: linear gains equal to
the grade, documents missing from the qrels count as grade 0, the mean is over the queries of the run.
Binary measures count grade >= 2 as relevant (TREC DL convention): RR@10 (reported as MRR@10) and AP (MAP).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

RELEVANT_GRADE = 2


def _measures() -> dict[str, Any]:
    from ir_measures import AP, RR, nDCG

    return {"ndcg@10": nDCG @ 10, "mrr@10": RR(rel=RELEVANT_GRADE) @ 10, "map": AP(rel=RELEVANT_GRADE)}


def ranking_metrics(
    qrels: Mapping[str, Mapping[str, int]], ranking: Mapping[str, Sequence[str]], per_query: bool = False
) -> dict[str, Any]:
    """nDCG@10, MRR@10 and MAP of ranked docid lists (best first) against graded qrels, means over queries.

    The order itself is evaluated: each list is given strictly decreasing scores, so trec_eval's tie-breaking
    (by docid) never reorders documents that a model scored equally.
    """
    import ir_measures

    run = [
        ir_measures.ScoredDoc(qid, docid, float(len(docs) - i))
        for qid, docs in ranking.items()
        for i, docid in enumerate(docs)
    ]
    judged = [ir_measures.Qrel(qid, docid, int(g)) for qid, docs in qrels.items() for docid, g in docs.items()]
    measures = _measures()
    names = {m: name for name, m in measures.items()}
    sums: dict[str, float] = defaultdict(float)
    by_query: dict[str, dict[str, float]] = defaultdict(dict)
    for metric in ir_measures.iter_calc(list(measures.values()), judged, run):
        sums[names[metric.measure]] += metric.value
        by_query[metric.query_id][names[metric.measure]] = metric.value
    n = len(by_query)
    out: dict[str, Any] = {name: (sums[name] / n if n else None) for name in measures}
    out["queries"] = n
    if per_query:
        out["per_query"] = dict(sorted(by_query.items()))
    return out


def shuffled_ranking_metrics(
    qrels: Mapping[str, Mapping[str, int]], ranking: Mapping[str, Sequence[str]], shuffles: int = 50, seed: int = 0
) -> dict[str, Any]:
    """`ranking_metrics` of the same candidate lists in random order, averaged over `shuffles` seeded shuffles.

    The chance level of a reranker: a model whose scores carry no relevance signal lands here, not at 0, so a
    rerank figure means something only next to this one and the first stage's own order.
    """
    import random

    rng = random.Random(seed)
    sums: dict[str, float] = defaultdict(float)
    for _ in range(shuffles):
        shuffled = {q: rng.sample(list(docs), len(docs)) for q, docs in ranking.items()}
        for name, value in ranking_metrics(qrels, shuffled).items():
            if name != "queries" and value is not None:
                sums[name] += value
    return {name: total / shuffles for name, total in sums.items()}


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], n_grades: int) -> list[list[int]]:
    """Rows are gold grades, columns predicted grades."""
    matrix = [[0] * n_grades for _ in range(n_grades)]
    for g, p in zip(gold, predicted, strict=True):
        matrix[g][p] += 1
    return matrix


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], n_grades: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-grade recall and the confusion matrix of predicted grades.

    Macro-F1 averages the F1 of every grade that occurs in the gold or the predicted grades (scikit-learn's
    default label set): a grade nobody used or predicted says nothing about the model.
    """
    if not gold:
        raise ValueError("no judged pairs to evaluate")
    matrix = confusion_matrix(gold, predicted, n_grades)
    present = sorted(set(gold) | set(predicted))
    f1s, recall = [], {}
    for k in range(n_grades):
        tp = matrix[k][k]
        support = sum(matrix[k])
        predicted_k = sum(row[k] for row in matrix)
        recall[str(k)] = tp / support if support else None
        if k in present:
            precision_k = tp / predicted_k if predicted_k else 0.0
            recall_k = tp / support if support else 0.0
            both = precision_k + recall_k
            f1s.append(2 * precision_k * recall_k / both if both else 0.0)
    return {
        "accuracy": sum(matrix[k][k] for k in range(n_grades)) / len(gold),
        "macro_f1": sum(f1s) / len(f1s),
        "per_grade_recall": recall,
        "confusion_matrix": matrix,
        "gold_distribution": {str(k): sum(matrix[k]) for k in range(n_grades)},
        "predicted_distribution": {str(k): sum(row[k] for row in matrix) for k in range(n_grades)},
    }


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b| over equal-width bins (i/B, (i+1)/B].

    `confidence` is the probability of the predicted grade (the top grade probability), `correct` whether that
    grade equals the gold one.
    """
    if not confidence:
        raise ValueError("no predictions to calibrate")
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(confidence):
        # right-closed bins: a confidence of 0.2 is in bin 1; rounding keeps 0.3 * 10 = 3.0000000000000004 in bin 2
        b = min(bins - 1, max(0, math.ceil(round(c * bins, 9)) - 1))
        members[b].append(i)
    total = 0.0
    for idx in members.values():
        accuracy = sum(bool(correct[i]) for i in idx) / len(idx)
        mean_conf = sum(confidence[i] for i in idx) / len(idx)
        total += len(idx) / len(confidence) * abs(accuracy - mean_conf)
    return total


def per_rule_accuracy(
    rules: Sequence[str | None], gold: Sequence[int], predicted: Sequence[int], head: Sequence[str] = ()
) -> dict[str, Any]:
    """Accuracy per deciding rule, and the unweighted means over head rules and over the other (tail) rules."""
    hits: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for rule, g, p in zip(rules, gold, predicted, strict=True):
        if rule is None:
            continue
        counts[rule] += 1
        hits[rule] += int(g == p)
    if not counts:
        return {}
    accuracy = {rule: hits[rule] / counts[rule] for rule in sorted(counts)}
    head_set = set(head)
    head_acc = [a for r, a in accuracy.items() if r in head_set]
    tail_acc = [a for r, a in accuracy.items() if r not in head_set]
    return {
        "per_rule_accuracy": accuracy,
        "per_rule_count": {rule: counts[rule] for rule in sorted(counts)},
        "head_rule_accuracy": sum(head_acc) / len(head_acc) if head_acc else None,
        "tail_rule_accuracy": sum(tail_acc) / len(tail_acc) if tail_acc else None,
    }
