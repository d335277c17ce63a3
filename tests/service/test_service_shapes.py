"""The three API shapes in process: TEI on /rerank, vLLM on /score, and the bodies that fit neither or both;
the same scores in every shape, the OpenAPI document listing each, and errors in each shape's convention."""

from __future__ import annotations

import math

import pytest

from tests.service.service_helpers import DOCS, QUERY


def _cohere_scores(client) -> dict[int, float]:
    data = client.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
    return {r["index"]: r["relevance_score"] for r in data["results"]}


def test_tei_shape_is_a_sorted_list_with_the_cohere_scores(client):
    cohere = _cohere_scores(client)
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert isinstance(ranks, list) and sorted(x["index"] for x in ranks) == list(range(len(DOCS)))
    assert [x["index"] for x in ranks] == sorted(cohere, key=lambda i: -cohere[i])
    assert all(set(x) == {"index", "score"} for x in ranks)  # no `text` unless asked for
    assert [x["score"] for x in ranks] == pytest.approx([cohere[x["index"]] for x in ranks], abs=1e-6)
    with_text = client.post("/v1/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [x["text"] for x in with_text] == [DOCS[x["index"]] for x in with_text]


def test_tei_raw_scores_are_log_odds_in_the_same_order(client):
    plain = client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert [x["index"] for x in raw] == [x["index"] for x in plain]
    assert [1 / (1 + math.exp(-x["score"])) for x in raw] == pytest.approx([x["score"] for x in plain], abs=1e-9)
    assert any(x["score"] < 0 for x in raw) or any(x["score"] > 1 for x in raw)  # not the plain score again


def test_tei_truncation_fields(client):
    long_text = "berlin population " * 200
    body = {"query": QUERY, "texts": [long_text, DOCS[0]], "truncate": True, "truncation_direction": "Right"}
    assert client.post("/rerank", json=body).status_code == 200
    assert client.post("/rerank", json={**body, "truncate": False, "truncation_direction": "right"}).status_code == 200
    left = client.post("/rerank", json={**body, "truncation_direction": "Left"})
    assert left.status_code == 422
    assert left.json()["error_type"] == "validation" and "truncation_direction" in left.json()["error"]
    assert "Left" in left.json()["error"] and "Right" in left.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"query": QUERY, "documents": DOCS, "texts": DOCS},
        {"query": QUERY},
        {"query": QUERY, "text_1": QUERY},
        ["a", "list"],
    ],
)
def test_rerank_body_of_no_clear_shape_is_422_naming_both_shapes(client, body):
    r = client.post("/rerank", json=body)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body"] and error["type"] == "body_shape"
    for field in ("documents", "texts", "top_n", "raw_scores", "Cohere", "text-embeddings-inference"):
        assert field in error["msg"]


def test_cohere_errors_keep_their_shape_and_field_names(client):
    r = client.post("/rerank", json={"query": 3, "documents": ["a"]})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "query"]]  # no union tag in the location
    tei = client.post("/rerank", json={"query": QUERY, "texts": ["a", ""]})
    assert tei.status_code == 422 and set(tei.json()) == {"error", "error_type"}
    assert tei.json()["error"].startswith("texts.1:")


def test_vllm_score_broadcasts_like_vllm(client):
    afrl = client.post("/score", json={"query": QUERY, "documents": DOCS}).json()["results"]
    one_to_n = client.post("/score", json={"model": "afrl", "text_1": QUERY, "text_2": DOCS})
    assert one_to_n.status_code == 200, one_to_n.text
    data = one_to_n.json()
    assert data["object"] == "list" and data["model"] == "afrl" and data["id"].startswith("score-")
    assert [d["index"] for d in data["data"]] == list(range(len(DOCS)))
    assert {d["object"] for d in data["data"]} == {"score"}
    assert [d["score"] for d in data["data"]] == pytest.approx([x["score"] for x in afrl], abs=1e-6)
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 0
    assert data["usage"]["completion_tokens"] == 0

    queries = ["berlin", "shoes", "phone"]
    pairs = client.post(
        "/score", json={"pairs": [{"query": q, "document": d} for q, d in zip(queries, DOCS[:3], strict=True)]}
    )
    n_to_n = client.post("/v1/score", json={"text_1": queries, "text_2": DOCS[:3]}).json()
    assert [d["score"] for d in n_to_n["data"]] == pytest.approx([x["score"] for x in pairs.json()["results"]])
    single = client.post("/score", json={"text_1": [QUERY], "text_2": DOCS[1]}).json()
    assert [d["score"] for d in single["data"]] == pytest.approx([afrl[1]["score"]], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"text_1": ["a", "b"], "text_2": ["c"]}, "body", ["1:1, 1:N or N:N", "2", "1"]),
        ({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "body", ["1:1, 1:N or N:N"]),
        ({"text_1": [], "text_2": ["c"]}, "body.text_1", ["text_1"]),
        ({"text_1": "a", "text_2": [""]}, "body.text_2", ["text_2"]),
        ({"text_1": "a"}, "body.text_2", ["text_2", "Field required"]),
    ],
)
def test_vllm_errors_in_vllm_convention(client, body, param, words):
    r = client.post("/score", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 422 and error["type"] == "Unprocessable Entity"
    assert error["param"].startswith(param)
    for word in words:
        assert word in error["message"]


def test_mixed_score_body_is_422_naming_both_shapes(client):
    r = client.post("/score", json={"query": QUERY, "documents": DOCS, "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["type"] == "body_shape" and "text_1" in error["msg"] and "pairs" in error["msg"]
    own = client.post("/score", json={"query": QUERY})
    assert own.status_code == 422 and "detail" in own.json()  # this service's body, its own message


def test_413_in_each_shape_convention(make_client):
    client = make_client(max_documents=2)
    docs = DOCS[:3]
    cohere = client.post("/rerank", json={"query": QUERY, "documents": docs})
    tei = client.post("/rerank", json={"query": QUERY, "texts": docs})
    vllm = client.post("/score", json={"text_1": QUERY, "text_2": docs})
    own = client.post("/score", json={"query": QUERY, "documents": docs})
    assert {r.status_code for r in (cohere, tei, vllm, own)} == {413}
    assert "AFRL_MAX_DOCUMENTS" in cohere.json()["detail"] and "AFRL_MAX_DOCUMENTS" in own.json()["detail"]
    assert tei.json()["error_type"] == "validation" and "AFRL_MAX_DOCUMENTS" in tei.json()["error"]
    assert vllm.json()["error"]["code"] == 413 and vllm.json()["error"]["type"] == "Request Entity Too Large"
    assert "AFRL_MAX_DOCUMENTS" in vllm.json()["error"]["message"] and vllm.json()["error"]["param"] is None


def test_openapi_lists_every_shape(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def refs(node) -> set[str]:
        return {item.get("$ref", "").rsplit("/", 1)[-1] for item in node.get("oneOf", node.get("anyOf", []))}

    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        op = spec["paths"][path]["post"]
        assert refs(op["requestBody"]["content"]["application/json"]["schema"]) == {"RerankRequest", "TeiRerankRequest"}
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
        assert {"$ref": "#/components/schemas/RerankResponse"} in answer
        assert {"type": "array", "items": {"$ref": "#/components/schemas/TeiRank"}} in answer
    for path in ("/score", "/v1/score"):
        op = spec["paths"][path]["post"]
        assert refs(op["requestBody"]["content"]["application/json"]["schema"]) == {"ScoreRequest", "VllmScoreRequest"}
        assert refs(op["responses"]["200"]["content"]["application/json"]["schema"]) == {
            "ScoreResponse",
            "VllmScoreResponse",
        }
    assert {"texts", "raw_scores", "return_text", "truncate"} <= set(schemas["TeiRerankRequest"]["properties"])
    assert {"text_1", "text_2", "model"} <= set(schemas["VllmScoreRequest"]["properties"])
    assert {"id", "object", "created", "model", "data", "usage"} <= set(schemas["VllmScoreResponse"]["properties"])
