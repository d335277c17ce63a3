"""Against a real uvicorn server on a free port: SSE event order over real HTTP, a client disconnect stopping
the generation, the official cohere SDK (v1 and v2 clients), and a bounded schemathesis run over the spec."""

from __future__ import annotations

import json
import time

import cohere
import httpx
import pytest
from service_helpers import GatedBackend, make_backend, serve, settings

from service.app import create_app

QUERY = "population of berlin"
DOCS = ["Berlin had 3,520,031 inhabitants in 2015.", "running shoes", "a phone case", "hiking boots"]


@pytest.fixture(scope="module")
def server(_tiny_models):
    model, tok = _tiny_models["qwen3"]
    app = create_app(settings(api_key="test-key", max_new_tokens=6), make_backend(model, tok))
    with serve(app) as url:
        yield url, app


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and name is not None:
            events.append((name, json.loads(line.split(":", 1)[1])))
            name = None
    return events


def test_sse_order_over_real_http(server):
    url, _ = server
    headers = {"Authorization": "Bearer test-key"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        with c.stream("POST", "/explain", json={"query": QUERY, "document": DOCS[0]}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = _events(r)
        score = c.post("/score", json={"pairs": [{"query": QUERY, "document": DOCS[0]}]}).json()["results"][0]
    names = [n for n, _ in events]
    assert names[0] == "score" and names[-1] == "done" and set(names[1:-1]) == {"delta"}
    assert events[0][1]["probabilities"] == pytest.approx(score["probabilities"], abs=1e-4)
    done = events[-1][1]
    assert done["text"] == "".join(p["text"] for n, p in events if n == "delta")
    assert done["completion_tokens"] == 6 and done["timings"]["time_to_score_ms"] > 0


def test_cohere_sdk_v1_and_v2(server):
    url, _ = server
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer test-key"}) as c:
        scores = [x["score"] for x in c.post("/score", json={"query": QUERY, "documents": DOCS}).json()["results"]]
    best = sorted(range(len(DOCS)), key=lambda i: -scores[i])

    v1 = cohere.Client(api_key="test-key", base_url=url).rerank(
        model="afrl", query=QUERY, documents=DOCS, top_n=2, return_documents=True
    )
    assert [r.index for r in v1.results] == best[:2]
    assert v1.results[0].document is not None and v1.results[0].document.text == DOCS[best[0]]
    assert v1.results[0].relevance_score == pytest.approx(scores[best[0]], abs=1e-4)
    assert v1.meta is not None and v1.meta.billed_units is not None and v1.meta.billed_units.input_tokens > 0

    v2 = cohere.ClientV2(api_key="test-key", base_url=url).rerank(model="afrl", query=QUERY, documents=DOCS)
    assert [r.index for r in v2.results] == best
    assert v2.id

    with pytest.raises(cohere.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=url).rerank(model="afrl", query=QUERY, documents=DOCS)


def test_client_disconnect_stops_generation(_tiny_models):
    model, tok = _tiny_models["qwen3"]
    backend = GatedBackend(make_backend(model, tok))
    app = create_app(settings(warmup=False, max_new_tokens=4096), backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/explain", json={"query": QUERY, "document": DOCS[0]}) as r:
            lines = r.iter_lines()
            seen = [next(lines) for _ in range(6)]  # the score event and a first delta, then hang up
        assert any("score" in s for s in seen)
        assert backend.generation_stopped.wait(10), "generation kept running after the client left"
        deltas = backend.deltas
        time.sleep(0.2)
        assert backend.deltas == deltas  # nothing more is generated
        assert app.state.explainer.active == 0
        assert c.get("/ready").json()["ready"] is True


def test_schemathesis_no_5xx_and_responses_match_schema(server):
    """Bounded property-based run over every operation of the OpenAPI spec (valid and invalid inputs)."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    url, app = server
    schema = schemathesis.openapi.from_dict(app.openapi())
    headers = {"Authorization": "Bearer test-key"}
    checked: list[str] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(
                base_url=url, headers=headers, checks=[not_a_server_error, response_schema_conformance], timeout=30
            )
            checked.append(case.operation.path)

        try:
            run()
        except Exception as e:  # report every failing operation, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert not failures, "\n".join(failures)
    every_model_route = {"/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/explain"}
    assert every_model_route | {"/health", "/metrics"} <= set(checked)
