"""In-process tests of every endpoint with a tiny model: shapes, order, and equality with the reference scorer."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from afrl.contract import parse_completion, result_from_logits
from tests.service.service_helpers import DOCS, QUERY


def test_score_query_documents_equals_reference_scorer(client, tiny_backend):
    r = client.post("/score", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    reference = tiny_backend.scorer.score([(QUERY, d) for d in DOCS])
    assert len(results) == len(DOCS)
    for got, ref in zip(results, reference, strict=True):
        assert got["grade"] == ref.grade
        assert got["score"] == pytest.approx(ref.score, abs=1e-4)
        assert got["probabilities"] == pytest.approx(ref.probabilities, abs=1e-4)
        assert got["truncated"] is False
    assert len({round(x["score"], 6) for x in results}) > 1  # the tiny model tells documents apart


def test_score_pairs_in_order_with_instruction(client, tiny_backend):
    pairs = [{"query": "berlin", "document": DOCS[0]}, {"query": "shoes", "document": DOCS[1]}]
    r = client.post("/score", json={"pairs": pairs, "instruction": "Grade it."})
    assert r.status_code == 200, r.text
    ref = tiny_backend.scorer.score([(p["query"], p["document"]) for p in pairs], instruction="Grade it.")
    assert [x["score"] for x in r.json()["results"]] == pytest.approx([x.score for x in ref], abs=1e-4)
    default = client.post("/score", json={"pairs": pairs}).json()["results"]
    assert [x["score"] for x in default] != pytest.approx([x.score for x in ref], abs=1e-6)


def test_rerank_sorted_top_n_documents_and_meta(client):
    scores = [x["score"] for x in client.post("/score", json={"query": QUERY, "documents": DOCS}).json()["results"]]
    body = {"model": "whatever", "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True}
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        r = client.post(path, json=body, headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["id"] == "abc-123"
        ranked = sorted(range(len(DOCS)), key=lambda i: -scores[i])[:3]
        assert [x["index"] for x in data["results"]] == ranked
        assert [x["relevance_score"] for x in data["results"]] == pytest.approx([scores[i] for i in ranked], abs=1e-4)
        assert [x["document"]["text"] for x in data["results"]] == [DOCS[i] for i in ranked]
        assert data["meta"]["billed_units"]["input_tokens"] > 0 and data["meta"]["tokens"]["input_tokens"] > 0
    plain = client.post("/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS]}).json()
    assert len(plain["results"]) == len(DOCS) and "document" not in plain["results"][0]


def test_rerank_max_tokens_per_doc_truncates_and_flags(client):
    long_doc = "berlin population " * 40
    short = client.post("/rerank", json={"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 4}).json()
    full = client.post("/rerank", json={"query": QUERY, "documents": [long_doc]}).json()
    assert short["meta"]["tokens"]["input_tokens"] < full["meta"]["tokens"]["input_tokens"]


def test_explain_json_matches_score_and_parses(client):
    r = client.post("/explain", json={"query": QUERY, "document": DOCS[0], "stream": False})
    assert r.status_code == 200, r.text
    data = r.json()
    score = client.post("/score", json={"pairs": [{"query": QUERY, "document": DOCS[0]}]}).json()["results"][0]
    assert data["score"]["probabilities"] == pytest.approx(score["probabilities"], abs=1e-4)
    done = data["done"]
    assert done["text"].startswith(str(data["score"]["grade"]))  # the explanation follows the score sent
    assert done["completion_tokens"] == 8 and done["stopped"] == "length"
    assert done["explanation"] == parse_completion(done["text"], DOCS[0]).to_dict()
    assert done["consistent"] is False  # a random model writes no valid explanation


def test_explain_stream_event_order(client):
    with client.stream("POST", "/explain", json={"query": QUERY, "document": DOCS[0]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.split(":", 1)[1].strip() for line in r.iter_lines() if line.startswith("event:")]
    assert events[0] == "score" and events[-1] == "done"
    assert set(events[1:-1]) == {"delta"}


def test_ops_endpoints(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    info = client.get("/info").json()
    assert info["manifest"]["grade_scale"]["labels"] == ["0", "1", "2", "3"]
    assert info["limits"]["max_documents"] == 1000
    assert info["runtime"]["device"] == "cpu" and info["runtime"]["dtype"] in ("float32", "bfloat16")
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/score", "/rerank", "/v1/rerank", "/v2/rerank", "/explain", "/info"} <= set(paths)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_move(client):
    before = _samples(client.get("/metrics").text)
    client.post("/score", json={"query": QUERY, "documents": DOCS})
    client.post("/explain", json={"query": QUERY, "document": DOCS[0], "stream": False})
    client.post("/score", json={"query": ""})
    after = _samples(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("afrl_requests_total", endpoint="/score", status="200") == 1
    assert delta("afrl_requests_total", endpoint="/score", status="422") == 1
    assert delta("afrl_pairs_scored_total") == len(DOCS) + 1
    grades = sum(v for (n, _), v in after.items() if n == "afrl_predicted_grade_total")
    assert grades - sum(v for (n, _), v in before.items() if n == "afrl_predicted_grade_total") == len(DOCS) + 1
    assert delta("afrl_explanation_tokens_total") == 8
    assert delta("afrl_batch_size_count") >= 1 and delta("afrl_inference_latency_seconds_count") >= 1
    assert delta("afrl_queue_latency_seconds_count") == 1
    assert delta("afrl_time_to_score_seconds_count") == 1
    assert delta("afrl_request_latency_seconds_count", endpoint="/score") == 2
    assert ("afrl_queue_depth", ()) in after and ("afrl_batch_tokens_count", ()) in after


def test_explain_score_equals_first_step_of_backend(tiny_backend):
    """The score event is the same grade distribution /score computes (first-token logits)."""
    import threading

    from service.backends.base import ScoreStep

    prompt = tiny_backend.builder.build(QUERY, DOCS[1])
    first = next(iter(tiny_backend.explain(prompt, 4, threading.Event())))
    assert isinstance(first, ScoreStep)
    expected = tiny_backend.scorer.score([(QUERY, DOCS[1])])[0].probabilities
    assert result_from_logits(first.logits.tolist()).probabilities == pytest.approx(expected, abs=1e-5)
    json.dumps(first.logits.tolist())
