"""`afrl.Reranker` on the tiny model: its documented example runs as a doctest, and in process it gives the
numbers and the order the service gives over HTTP (one scoring path), with explanations that stop when closed."""

from __future__ import annotations

import doctest
import gc
import time

import pytest
from fastapi.testclient import TestClient

import afrl.reranker
from afrl import Reranker
from afrl.testing import save_tiny_model
from service.app import create_app
from service.settings import Settings
from tests.service.service_helpers import DOCS as API_DOCS
from tests.service.service_helpers import QUERY

DOCS = [*API_DOCS, "Berlin"]  # the API tests' documents and a short on-topic one


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("reranker") / "tiny-qwen3")


@pytest.fixture(scope="module")
def reranker(tiny_dir):
    with Reranker(str(tiny_dir), threads=1, max_new_tokens=12) as r:
        yield r


@pytest.fixture(scope="module")
def http(reranker):
    """The service over the very backend object the Reranker loaded, with default batching settings."""
    app = create_app(Settings(log_json=False, warmup=False, max_new_tokens=12), reranker.backend)
    with TestClient(app) as client:
        yield client


def test_documented_example_runs_on_the_tiny_model(tiny_dir):
    tests = doctest.DocTestFinder().find(afrl.reranker, extraglobs={"MODEL": str(tiny_dir)})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 9 and result.failed == 0


def test_rank_orders_like_rerank_in_both_shapes(reranker, http):
    hits = reranker.rank(QUERY, DOCS, return_documents=True)
    cohere = http.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
    tei = http.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert [h["corpus_id"] for h in hits] == [r["index"] for r in cohere] == [r["index"] for r in tei]
    assert [h["score"] for h in hits] == [r["relevance_score"] for r in cohere]  # the same passes: equal
    assert [h["text"] for h in hits] == [DOCS[h["corpus_id"]] for h in hits]
    assert len({round(h["score"], 6) for h in hits}) == len(DOCS)  # distinct scores: the order means something
    top = reranker.rank(QUERY, DOCS, top_k=2)
    assert top == [{k: v for k, v in h.items() if k != "text"} for h in hits[:2]]


def test_predict_equals_score_for_pairs_and_grades(reranker, http):
    pairs = [("berlin", DOCS[0]), ("shoes", DOCS[1]), ("phone", DOCS[2])]
    body = {"pairs": [{"query": q, "document": d} for q, d in pairs]}
    served = http.post("/score", json=body).json()["results"]
    assert reranker.predict(pairs) == [r["score"] for r in served]
    shared = reranker.predict([(QUERY, d) for d in DOCS])
    ranked = {h["corpus_id"]: h for h in reranker.rank(QUERY, DOCS)}
    assert shared == [ranked[i]["score"] for i in range(len(DOCS))]
    grades = http.post("/score", json={"query": QUERY, "documents": DOCS}).json()["results"]
    assert [ranked[i]["grade"] for i in range(len(DOCS))] == [g["grade"] for g in grades]


def test_long_inputs_go_in_batches_with_a_progress_bar(tiny_dir, http, capsys):
    docs = [f"{DOCS[i % len(DOCS)]} number {i}" for i in range(20)]
    with Reranker(str(tiny_dir), threads=1, batch_size=8) as small:
        hits = small.rank(QUERY, docs)
        err = capsys.readouterr().err
        assert "Scoring" in err and "20/20" in err  # more than one batch: the bar is on by default
        small.predict([(QUERY, d) for d in docs[:8]])
        assert capsys.readouterr().err == ""  # one batch: no bar
        small.predict([(QUERY, d) for d in docs[:8]], show_progress_bar=True)
        assert "8/8" in capsys.readouterr().err
    served = http.post("/rerank", json={"query": QUERY, "documents": docs}).json()["results"]
    assert [h["corpus_id"] for h in hits] == [r["index"] for r in served]  # 3 jobs here, 1 there: same order
    assert [h["score"] for h in hits] == pytest.approx([r["relevance_score"] for r in served], abs=1e-5)


def test_explain_streams_the_text_after_the_grade(reranker, http):
    with reranker.explain(QUERY, DOCS[0]) as explanation:
        first = explanation.score
        chunks = list(explanation)
    assert explanation.result is not None and chunks
    text = explanation.result["text"]
    label = str(explanation.grade)
    assert text.startswith(label) and "".join(chunks) == text[len(label) :].removeprefix("\n")
    served = http.post("/explain", json={"query": QUERY, "document": DOCS[0], "stream": False}).json()
    assert served["done"]["text"] == text and served["score"]["score"] == pytest.approx(first, abs=1e-6)
    assert explanation.grade == served["score"]["grade"] and explanation.probabilities == pytest.approx(
        served["score"]["probabilities"], abs=1e-6
    )
    assert first == pytest.approx(reranker.predict([(QUERY, DOCS[0])])[0], abs=1e-6)


def test_an_explanation_closed_or_dropped_early_frees_its_slot(tiny_dir):
    with Reranker(str(tiny_dir), threads=1, max_concurrent_explanations=1, explain_timeout_s=20) as r:
        explainer = r._services.explainer
        first = r.explain(QUERY, DOCS[0], max_new_tokens=64)
        next(first)
        first.close()
        dropped = r.explain(QUERY, DOCS[1], max_new_tokens=64)
        del dropped
        gc.collect()
        # With a leaked slot this would wait for it and fail with "no explanation slot became free".
        third = r.explain(QUERY, DOCS[2], max_new_tokens=4)
        assert isinstance("".join(third), str) and third.result is not None
        deadline = time.monotonic() + 10
        while explainer.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert explainer.active == 0


def test_bad_input_names_what_is_wrong(reranker, tiny_dir):
    with pytest.raises(ValueError, match=r"pairs\[1\] must be a \(query, document\) pair"):
        reranker.predict([("q", "d"), ("only a query",)])
    with pytest.raises(ValueError, match=r"pairs\[0\] document must be a non-empty string"):
        reranker.predict([("q", "")])
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        reranker.rank(QUERY, DOCS, top_k=0)
    closed = Reranker(str(tiny_dir), threads=1)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.predict([("q", "d")])


@pytest.mark.slow
def test_default_model_in_process_matches_the_reference_scorer():
    """`Reranker("default")` as the README shows it: the shipped model, scores equal to afrl.scorer's."""
    from afrl.scorer import load_scorer

    docs = ["Berlin had 3,520,031 registered inhabitants in 2015.", "Running shoes for men."]
    with Reranker("default", dtype="fp32", threads=1) as r:
        hits = r.rank(QUERY, docs)
    reference = load_scorer("default").score([(QUERY, d) for d in docs])
    assert sorted(h["corpus_id"] for h in hits) == [0, 1]
    for h in hits:
        assert h["score"] == pytest.approx(reference[h["corpus_id"]].score, abs=1e-4)
        assert h["grade"] == reference[h["corpus_id"]].grade
