"""Each API shape against a real uvicorn server, sent the way the clients in the field send it.

The TEI bodies are those the clients' source builds (read from it; the clients themselves are not installed):
- Haystack `HuggingFaceTEIRanker.run` (haystack/components/rankers/hugging_face_tei.py, deepset-ai/haystack
  at commit 0cb4fe63, the 2.x line): `{"query", "texts", "raw_scores"}`, plus `"truncate": true,
  "truncation_direction": "Right"|"Left"` when a direction is given; posts to urljoin(url, "/rerank") with
  `Authorization: Bearer TOKEN`, and keeps `result[:top_k]` as it comes, so the list must arrive sorted.
- LlamaIndex `TextEmbeddingInference._call_api` (llama-index-integrations/postprocessor/
  llama-index-postprocessor-tei-rerank/llama_index/postprocessor/tei_rerank/base.py, run-llama/llama_index at
  commit 18b5f1b4, package 0.4.x): `{"query", "texts"}` to f"{base_url}/rerank", the `auth_token` string sent
  as the whole Authorization header; scores are assigned back by each item's `index`.
- LangChain: LangChain has no TEI reranker of its own (langchain-community's document_compressors hold Cohere,
  Infinity, DashScope, ...); the LangChain integration that speaks TEI is langchain-dartmouth's
  `TeiCrossEncoderReranker` over `TextEmbeddingInferenceClient.rerank` (src/dartmouth_langchain/
  cross_encoders.py, Dartmouth-Libraries/langchain-dartmouth at commit 009178f3): `{"query", "texts"}` to
  inference_server_url + "rerank", scores read back sorted by `index`.
vLLM's score API is driven with plain httpx, as vLLM's own docs do; the Cohere shape has its SDK test in
test_service_server.py.
"""

from __future__ import annotations

import time
from urllib.parse import urljoin

import httpx
import pytest
from service_helpers import make_backend, serve, settings

from service.app import create_app

QUERY = "population of berlin"
DOCS = ["Berlin had 3,520,031 inhabitants in 2015.", "running shoes", "a phone case", "hiking boots", "Berlin"]
KEY = "client-key"


@pytest.fixture(scope="module")
def server(_tiny_models):
    model, tok = _tiny_models["qwen3"]
    with serve(create_app(settings(api_key=KEY), make_backend(model, tok))) as url:
        yield url


@pytest.fixture(scope="module")
def expected(server) -> dict[int, float]:
    """The Cohere shape's scores, which every other shape must reproduce."""
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}) as c:
        data = c.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
    return {r["index"]: r["relevance_score"] for r in data["results"]}


def _best_first(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda i: -scores[i])


def test_haystack_tei_ranker_bodies(server, expected):
    url, top_k = server + "/", 3
    headers = {"Authorization": f"Bearer {KEY}"}
    for extra in ({}, {"truncate": True, "truncation_direction": "Right"}):
        payload = {"query": QUERY, "texts": DOCS, "raw_scores": False, **extra}
        response = httpx.post(urljoin(url, "/rerank"), json=payload, headers=headers, timeout=30)
        result = response.json()
        assert response.status_code == 200 and isinstance(result, list), result
        kept = result[: min(top_k, len(result))]  # Haystack's _compose_response: the first top_k, as sent
        assert [item["index"] for item in kept] == _best_first(expected)[:top_k]
        assert [item["score"] for item in kept] == pytest.approx([expected[i] for i in _best_first(expected)[:3]])
    # Haystack reads an error body as {"error", "error_type"} and raises with both.
    left = httpx.post(
        urljoin(url, "/rerank"),
        json={"query": QUERY, "texts": DOCS, "raw_scores": False, "truncate": True, "truncation_direction": "Left"},
        headers=headers,
    )
    assert left.status_code == 422 and left.json()["error_type"] == "validation" and "Left" in left.json()["error"]


def test_llamaindex_tei_postprocessor_body(server, expected):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}  # auth_token as given
    with httpx.Client() as client:
        response = client.post(f"{server}/rerank", headers=headers, json={"query": QUERY, "texts": DOCS}, timeout=60)
    scores = response.json()
    assert len(scores) == len(DOCS)
    assigned = {item["index"]: float(item["score"]) for item in scores}  # nodes[original_index].score = ...
    assert assigned == pytest.approx(expected)


def test_langchain_dartmouth_tei_client_body(server, expected):
    session = httpx.Client(headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with session:
        r = session.post(url=server + "/" + "rerank", json={"query": QUERY, "texts": DOCS})
    r.raise_for_status()
    scores = [text["score"] for text in sorted(r.json(), key=lambda x: x["index"])]
    assert scores == pytest.approx([expected[i] for i in range(len(DOCS))])


def test_tei_without_the_key_is_refused(server):
    assert httpx.post(server + "/rerank", json={"query": QUERY, "texts": DOCS}).status_code == 401


def test_vllm_score_with_httpx(server, expected):
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "vllm-1"}
    before = int(time.time())
    with httpx.Client(base_url=server, headers=headers, timeout=30) as c:
        for path in ("/score", "/v1/score"):
            r = c.post(path, json={"model": "tiny", "text_1": QUERY, "text_2": DOCS})
            assert r.status_code == 200, r.text
            data = r.json()
            assert set(data) == {"id", "object", "created", "model", "data", "usage"}
            assert data["id"] == "score-vllm-1" and data["object"] == "list" and data["model"] == "tiny"
            assert before <= data["created"] <= int(time.time()) + 1
            assert [d["index"] for d in data["data"]] == list(range(len(DOCS)))
            assert [d["score"] for d in data["data"]] == pytest.approx([expected[i] for i in range(len(DOCS))])
            assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 0
            assert float(r.headers["x-inference-time-ms"]) > 0
        pairwise = c.post("/score", json={"text_1": DOCS[:2], "text_2": DOCS[:2]}).json()
        assert len(pairwise["data"]) == 2
        bad = c.post("/score", json={"text_1": DOCS[:2], "text_2": DOCS[:3]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == 422
    assert "1:1, 1:N or N:N" in bad.json()["error"]["message"]
