"""Evaluation: metrics against hand-computed values, and `afrl eval` end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ir_measures
import pytest

from afrl.cli import main
from afrl.contract import format_target
from afrl.scorer import load_scorer
from afrl.testing import save_tiny_model
from training.data import Record, TrecCollection
from training.evaluate import (
    evaluate_records,
    explanation_consistency,
    judged_pool_ranking,
    rerank,
    split_qids,
    write_report,
)
from training.metrics import (
    classification_metrics,
    expected_calibration_error,
    per_rule_accuracy,
    ranking_metrics,
    shuffled_ranking_metrics,
)
from training.rule_world import generate_records
from training.sources import load_source

REQUIRED_KEYS = {
    "ndcg@10",
    "ndcg@10_judged",
    "mrr@10",
    "map",
    "accuracy",
    "macro_f1",
    "per_grade_recall",
    "ece",
    "consistency",
    "bm25_ndcg@10",
}


def dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_ranking_metrics_equal_hand_computation():
    qrels = {"q1": {"d1": 3, "d2": 0, "d3": 2, "d4": 1}, "q2": {"e1": 2, "e2": 0}}
    ranking = {"q1": ["d2", "d3", "d1", "d5"], "q2": ["e2", "e1"]}  # d5 is unjudged: grade 0
    m = ranking_metrics(qrels, ranking, per_query=True)
    ndcg_q1 = dcg([0, 2, 3, 0]) / dcg([3, 2, 1])
    ndcg_q2 = dcg([0, 2]) / dcg([2])
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert m["per_query"]["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    # grade >= 2 is relevant: q1's first relevant at rank 2 (d3), q2's at rank 2 (e1)
    assert m["mrr@10"] == pytest.approx(0.5)
    ap_q1 = (1 / 2 + 2 / 3) / 2  # d3 at rank 2, d1 at rank 3; two relevant documents
    ap_q2 = 1 / 2
    assert m["map"] == pytest.approx((ap_q1 + ap_q2) / 2)
    assert m["queries"] == 2


def test_ranking_keeps_the_given_order_on_ties():
    # trec_eval would break equal scores by docid; the evaluated order must be the list's own
    qrels = {"q": {"a": 0, "b": 3}}
    assert ranking_metrics(qrels, {"q": ["a", "b"]})["mrr@10"] == pytest.approx(0.5)
    assert ranking_metrics(qrels, {"q": ["b", "a"]})["mrr@10"] == pytest.approx(1.0)


def test_classification_metrics_equal_hand_computation():
    gold = [0, 0, 1, 2, 3, 3]
    pred = [0, 1, 1, 2, 3, 0]
    m = classification_metrics(gold, pred, 4)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [0.5, 2 * 0.5 * 1 / 1.5, 1.0, 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert m["per_grade_recall"] == {"0": 0.5, "1": 1.0, "2": 1.0, "3": 0.5}
    # grades that nobody used or predicted do not enter macro-F1; their recall is undefined
    m2 = classification_metrics([0, 0, 1], [0, 1, 1], 4)
    assert m2["macro_f1"] == pytest.approx(2 / 3)
    assert m2["per_grade_recall"]["2"] is None


def test_ece_equals_hand_computation():
    conf = [0.95, 0.9, 0.55, 0.6, 0.3]
    correct = [True, False, True, True, False]
    # bins (0.9,1]: acc 1 conf .95; (0.8,0.9]: acc 0 conf .9; (0.5,0.6]: acc 1 conf .575; (0.2,0.3]: acc 0 conf .3
    expected = (0.05 + 0.9 + 2 * 0.425 + 0.3) / 5
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    assert expected_calibration_error([0.7, 0.7], [True, False]) == pytest.approx(0.2)


def test_per_rule_accuracy_and_head_tail_means():
    rules = ["a", "a", "b", "c", None]
    m = per_rule_accuracy(rules, [1, 1, 0, 2, 3], [1, 0, 0, 0, 3], head=["a"])
    assert m["per_rule_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["head_rule_accuracy"] == 0.5
    assert m["tail_rule_accuracy"] == 0.5  # unweighted mean over tail rules b and c


def test_judged_pool_skips_groups_without_a_relevant_pair():
    recs = [
        Record("1", "q", "d", 3, qid="g1"),
        Record("2", "q", "d", 0, qid="g1"),
        Record("3", "p", "d", 0, qid="g2"),
        Record("4", "p", "d", 0, qid="g2"),
    ]
    m = judged_pool_ranking(recs, [0.1, 0.9, 0.5, 0.4])
    assert m["judged_queries"] == 1
    assert m["ndcg@10_judged"] == pytest.approx(dcg([0, 3]) / dcg([3]))


def test_rerank_puts_unscored_candidates_last_with_lower_scores():
    docs, scores = rerank(["a", "b", "c", "d"], {"a": 0.2, "b": 0.9, "d": 0.2})
    assert docs == ["b", "a", "d", "c"]  # a and d tie: first-stage order
    assert scores[:3] == [0.9, 0.2, 0.2] and scores[3] < 0.2


# ---------------------------------------------------------------------------------------------------- with a model


def write_tiny_trec(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    queries = {"q1": "running shoes size 42", "q2": "berlin population", "q3": "phone case for the new model"}
    passages = {
        "p1": "Trailmax running shoes. Size: EU 42.",
        "p2": "Berlin had a population of 3,520,031 registered inhabitants.",
        "p3": "Waterproof hiking boots for men.",
        "p4": "A phone case for the new model, black.",
        "p5": "Running shoes for men, size 44.",
        "p6": "The population of berlin grew in 2015.",
    }
    qrels = [("q1", "p1", 3), ("q1", "p5", 1), ("q1", "p3", 0), ("q2", "p2", 3), ("q2", "p6", 2), ("q3", "p4", 2)]
    run = {"q1": ["p3", "p5", "p1", "p9"], "q2": ["p6", "p4", "p2"], "q3": ["p1", "p4"]}  # p9: no text
    (d / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    (d / "passages.tsv").write_text("".join(f"{p}\t{t}\n" for p, t in passages.items()))
    (d / "qrels.txt").write_text("".join(f"{q} 0 {p} {g}\n" for q, p, g in qrels))
    lines = [f"{q} Q0 {p} {i} {10 - i}.0 bm25\n" for q, ps in run.items() for i, p in enumerate(ps, 1)]
    (d / "bm25_top100.run").write_text("".join(lines))
    return d


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_afrl_eval_trec_end_to_end(tmp_path, tiny_model_dir, capsys):
    trec = write_tiny_trec(tmp_path / "trec")
    out = tmp_path / "out"
    rc = main(
        [
            *("eval", "--model", str(tiny_model_dir), "--trec-dir", str(trec), "--out", str(out)),
            *("--explain-sample", "2", "--explain-tokens", "6", "--threads", "1"),
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED_KEYS
    assert metrics["queries"] == 3 and metrics["n_judged"] == 6 and metrics["unscored_run_docs"] == 1
    assert metrics["consistency_n"] == 2 and 0.0 <= metrics["consistency"] <= 1.0
    assert len((out / "explanations.jsonl").read_text().splitlines()) == 2
    assert "| nDCG@10, rerank first-stage run |" in (out / "report.md").read_text()

    # BM25 reference row, by hand: q1 [0, 1, 3, -], q2 [2, 0, 3], q3 [0, 2]
    bm25 = [dcg([0, 1, 3]) / dcg([3, 1]), dcg([2, 0, 3]) / dcg([3, 2]), dcg([0, 2]) / dcg([2])]
    assert metrics["bm25_ndcg@10"] == pytest.approx(sum(bm25) / 3)

    # run.trec: TREC format, every candidate once, ranks 1..n, scores decreasing, model scores as scores
    rows = [line.split() for line in (out / "run.trec").read_text().splitlines()]
    assert all(len(r) == 6 and r[1] == "Q0" and r[5] == "afrl" for r in rows)
    by_q: dict[str, list[list[str]]] = {}
    for r in rows:
        by_q.setdefault(r[0], []).append(r)
    assert {q: sorted(x[2] for x in v) for q, v in by_q.items()} == {
        "q1": ["p1", "p3", "p5", "p9"],
        "q2": ["p2", "p4", "p6"],
        "q3": ["p1", "p4"],
    }
    for v in by_q.values():
        assert [int(x[3]) for x in v] == list(range(1, len(v) + 1))
        assert [float(x[4]) for x in v] == sorted((float(x[4]) for x in v), reverse=True)
    assert by_q["q1"][-1][2] == "p9"
    scorer = load_scorer(str(tiny_model_dir))
    top = by_q["q2"][0]
    expected = scorer.score([("berlin population", TrecCollection.load(trec).passages[top[2]])])[0].score
    assert float(top[4]) == pytest.approx(expected, abs=1e-5)
    # the metrics describe the written run: re-evaluating run.trec with ir_measures gives the same nDCG@10
    qrels = list(ir_measures.read_trec_qrels(str(trec / "qrels.txt")))
    written = list(ir_measures.read_trec_run(str(out / "run.trec")))
    again = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, written)
    assert again[ir_measures.nDCG @ 10] == pytest.approx(metrics["ndcg@10"], abs=1e-4)


def test_shuffled_reference_is_the_chance_level():
    # one relevant doc among two candidates: rank 1 or 2 with equal odds, nDCG@10 = (1 + 1/log2(3)) / 2
    qrels = {"q": {"a": 1, "b": 0}}
    chance = shuffled_ranking_metrics(qrels, {"q": ["a", "b"]}, shuffles=400)
    assert chance["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=0.03)
    # when every candidate has the same gain the order cannot matter
    flat = shuffled_ranking_metrics({"q": {"a": 2, "b": 2, "c": 2}}, {"q": ["a", "b", "c"]}, shuffles=5)
    assert flat["ndcg@10"] == pytest.approx(1.0)
    assert shuffled_ranking_metrics(qrels, {"q": ["a", "b"]}, seed=3) == shuffled_ranking_metrics(
        qrels, {"q": ["a", "b"]}, seed=3
    )


def test_afrl_eval_references_only_scores_nothing(tmp_path, capsys):
    trec = write_tiny_trec(tmp_path / "trec")
    out = tmp_path / "refs"
    argv = ["eval", "--references-only", "--model", "no-such-model", "--trec-dir", str(trec), "--out", str(out)]
    assert main(argv) == 0  # the model is never loaded
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    bm25 = [dcg([0, 1, 3]) / dcg([3, 1]), dcg([2, 0, 3]) / dcg([3, 2]), dcg([0, 2]) / dcg([2])]
    assert metrics["bm25_ndcg@10"] == pytest.approx(sum(bm25) / 3)
    assert printed["shuffled_ndcg@10"] == metrics["shuffled_ndcg@10"]
    assert 0.0 < metrics["shuffled_ndcg@10"] < 1.0 and "ndcg@10" not in metrics
    assert "| BM25 shuffled |" in (out / "report.md").read_text()
    assert main(["eval", "--references-only", "--data", "rules:4", "--out", str(out)]) == 2


def test_afrl_eval_jsonl_rule_world(tmp_path, tiny_model_dir):
    from training.data import write_jsonl

    path = tmp_path / "rules.jsonl"
    write_jsonl(generate_records(60, seed=1), path)
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--jsonl", str(path), "--out", str(out)]
    assert main([*argv, "--explain-sample", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_judged"] == 60 and metrics["consistency"] is None
    assert {"ndcg@10_judged", "accuracy", "macro_f1", "ece", "head_rule_accuracy", "tail_rule_accuracy"} <= set(metrics)
    assert set(metrics["per_rule_accuracy"]) == {r.rule for r in generate_records(60, seed=1)}
    assert "## Per rule (rule world)" in (out / "report.md").read_text()
    assert not (out / "run.trec").exists()


def test_eval_cli_refuses_mixed_selection(tmp_path, tiny_model_dir, capsys):
    trec = write_tiny_trec(tmp_path / "trec")
    argv = ["eval", "--model", str(tiny_model_dir), "--trec-dir", str(trec), "--out", str(tmp_path / "o")]
    rc = main([*argv, "--split", "dev", "--qids-from", "trec:x:dev"])
    assert rc == 2 and "either --qids-from or --split" in capsys.readouterr().err


def test_evaluate_records_agrees_with_the_scorer(tiny_qwen):
    """Scoring and metrics are wired together: accuracy and per-rule accuracy are those of scorer.score."""
    from afrl.contract import GradeScale, PromptBuilder
    from afrl.scorer import TorchScorer

    model, tok = tiny_qwen
    scorer = TorchScorer(model, tok, PromptBuilder(tok, max_document_tokens=32), GradeScale(), batch_size=3)
    records = generate_records(24, seed=5)
    m = evaluate_records(scorer, records)
    predicted = [res.grade for res in scorer.score([(r.query, r.document) for r in records])]
    hits = [p == r.grade for p, r in zip(predicted, records, strict=True)]
    assert m["accuracy"] == pytest.approx(sum(hits) / len(records))
    exact = [h for h, r in zip(hits, records, strict=True) if r.rule == "exact_match"]
    assert m["per_rule_accuracy"]["exact_match"] == pytest.approx(sum(exact) / len(exact))
    assert sum(m["predicted_distribution"].values()) == len(records) == m["n_judged"]


def test_explanation_consistency_counts_consistent_completions(tiny_qwen, monkeypatch):
    """A model that writes the gold target is fully consistent; one that writes the wrong Verdict is not. The
    decoding is the service's (`greedy_continuation`, argmax grade first), stubbed here with scripted text."""
    from afrl.contract import GradeScale, PromptBuilder
    from afrl.scorer import TorchScorer
    from training import evaluate

    model, tok = tiny_qwen
    scorer = TorchScorer(model, tok, PromptBuilder(tok, max_document_tokens=32), GradeScale())
    records = generate_records(6, seed=0)
    targets = {r.query + r.document: format_target(r.grade, r.explanation) for r in records}

    def fake_continuation(model_, ids, max_new_tokens, eos, grade_ids, constraint, wrong=False):
        assert model_ is model and grade_ids == scorer.grade_ids  # the grade is forced, as /explain does
        text = tok.decode(ids[0])
        record = next(r for r in records if r.document[:20] in text)
        target = targets[record.query + record.document]
        if wrong:
            target = target.replace(f"Verdict: {record.grade}", f"Verdict: {(record.grade + 1) % 4}")
        return tok.encode(target, add_special_tokens=False)

    monkeypatch.setattr(evaluate, "greedy_continuation", fake_continuation)
    fraction, samples = explanation_consistency(scorer, records, sample=4)
    assert fraction == 1.0 and len(samples) == 4 and all(s["free_consistent"] for s in samples)
    monkeypatch.setattr(evaluate, "greedy_continuation", lambda *a, **kw: fake_continuation(*a, **kw, wrong=True))
    fraction, samples = explanation_consistency(scorer, records, sample=4)
    assert fraction == 0.0 and all(not s["consistent"] for s in samples)


def test_write_report_keeps_samples_out_of_metrics(tmp_path):
    metrics = {"accuracy": 0.5, "explanation_samples": [{"id": "x", "consistent": True}]}
    write_report(metrics, tmp_path)
    assert "explanation_samples" not in json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads((tmp_path / "explanations.jsonl").read_text())["id"] == "x"


# ---------------------------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_dev_split_matches_training_holdout(trec_dir):
    coll = TrecCollection.load(trec_dir / "dl20")
    dev = split_qids(coll, "dev", 0.2, 0)
    assert len(dev) == 11
    assert dev == sorted({r.qid for r in load_source(f"trec:{trec_dir / 'dl20'}:dev", 0.2, 0)})
    train = split_qids(coll, "train", 0.2, 0)
    assert not set(train) & set(dev) and len(train) + len(dev) == 54


@pytest.mark.data
def test_afrl_eval_real_trec_two_queries(trec_dir, tiny_model_dir, tmp_path):
    dl20 = trec_dir / "dl20"
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--trec-dir", str(dl20), "--split", "dev", "--max-queries", "2"]
    assert main([*argv, "--out", str(out), "--explain-sample", "1", "--explain-tokens", "4", "--batch-size", "32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED_KEYS and metrics["queries"] == 2 and metrics["rerank_queries"] == 2
    coll = TrecCollection.load(dl20)
    qids = split_qids(coll, "dev")[:2]
    bm25 = ranking_metrics({q: coll.qrels[q] for q in qids}, {q: [d for d, _ in coll.run[q]] for q in qids})
    assert metrics["bm25_ndcg@10"] == pytest.approx(bm25["ndcg@10"])
    rows = (out / "run.trec").read_text().splitlines()
    assert len(rows) == sum(len(coll.run[q]) for q in qids)
    assert metrics["n_judged"] == len(coll.judged_records(qids))
