"""Every limit and error of the API: 422, 413, truncation, 429, 503, 401, ids and timing headers, bad bodies,
and cancellations that must not leak work."""

from __future__ import annotations

import asyncio

import pytest
from service_helpers import GatedBackend, running, settings

from service.app import create_app

QUERY = "population of berlin"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": "not a list"}, "documents"),
        ({"query": 3, "documents": ["a"]}, "query"),
        ({"pairs": [{"query": "q", "document": 5}]}, "document"),
        ({"pairs": [{"query": "q"}]}, "document"),
    ],
)
def test_score_422_names_the_field(client, body, field):
    r = client.post("/score", json=body)
    assert r.status_code == 422
    assert any(field in map(str, err["loc"]) for err in r.json()["detail"]), r.json()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/rerank", {"query": "q", "documents": [""]}, "documents"),
        ("/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ("/rerank", {"query": "", "documents": ["a"]}, "query"),
        ("/explain", {"query": "q", "document": ""}, "document"),
        ("/explain", {"query": "q", "document": "d", "stream": "maybe"}, "stream"),
    ],
)
def test_other_endpoints_422(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422
    assert field in str(r.json()["detail"])


def test_score_422_for_empty_document_and_mixed_forms(client):
    assert client.post("/score", json={"query": "q", "documents": ["a", ""]}).status_code == 422
    both = {"query": "q", "documents": ["a"], "pairs": [{"query": "q", "document": "d"}]}
    assert client.post("/score", json=both).status_code == 422


def test_too_many_documents_413(make_client):
    client = make_client(max_documents=3)
    r = client.post("/score", json={"query": QUERY, "documents": ["a", "b", "c", "d"]})
    assert r.status_code == 413 and "AFRL_MAX_DOCUMENTS" in r.json()["detail"]
    assert client.post("/rerank", json={"query": QUERY, "documents": ["a"] * 4}).status_code == 413
    assert client.post("/score", json={"query": QUERY, "documents": ["a", "b", "c"]}).status_code == 200


def test_huge_payload_413_and_server_survives(make_client):
    client = make_client(max_body_bytes=4096)
    r = client.post("/score", json={"query": QUERY, "documents": ["word " * 2000]})
    assert r.status_code == 413
    chunked = client.post("/score", content=iter([b'{"query": "q", "documents": ["' + b"a" * 8000 + b'"]}']))
    assert chunked.status_code == 413
    assert client.post("/score", json={"query": QUERY, "documents": ["a"]}).status_code == 200


def test_overlong_document_truncated_and_flagged(client):
    r = client.post("/score", json={"query": QUERY, "documents": ["berlin " * 500, "short"]})
    assert r.status_code == 200
    assert [x["truncated"] for x in r.json()["results"]] == [True, False]


def test_malformed_and_non_utf8_bodies_do_not_crash(client):
    headers = {"content-type": "application/json"}
    assert client.post("/score", content=b'{"query": "q", "documents": [', headers=headers).status_code == 422
    assert client.post("/score", content=b'{"query": "\xff\xfe", "documents": ["a"]}', headers=headers).status_code in (
        400,
        422,
    )
    assert client.post("/score", content=b"\x00\x01\x02", headers=headers).status_code in (400, 422)
    assert client.post("/score", content=b"[1, 2]", headers=headers).status_code == 422
    assert client.post("/score", json={"query": QUERY, "documents": ["a"]}).status_code == 200


def test_api_key_401(make_client):
    client = make_client(api_key="s3cret")
    body = {"query": QUERY, "documents": ["a"]}
    r = client.post("/score", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/rerank", json=body).status_code == 401
    assert client.post("/explain", json={"query": "q", "document": "d"}).status_code == 401
    assert client.get("/info").status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_request_id_and_timing_headers(client):
    r = client.post("/score", json={"query": QUERY, "documents": ["a", "b"]}, headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    for h in ("x-queue-time-ms", "x-inference-time-ms", "x-process-time-ms"):
        assert float(r.headers[h]) >= 0
    assert float(r.headers["x-inference-time-ms"]) > 0
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/health").headers["x-request-id"]
    # An unsafe client id (header injection, huge) is replaced, not echoed.
    assert client.get("/health", headers={"X-Request-ID": "a b" * 100}).headers["x-request-id"] != "a b" * 100


def _gated_app(tiny_backend, **kw):
    backend = GatedBackend(tiny_backend)
    return create_app(settings(warmup=False, **kw), backend), backend


async def _wait_for(cond, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def test_queue_full_429_with_retry_after(tiny_backend):
    app, backend = _gated_app(tiny_backend, max_batch_pairs=2, max_queue_pairs=4, max_wait_ms=0)

    async def main():
        async with running(app) as c:
            body = {"query": QUERY, "documents": ["a", "b"]}
            first = asyncio.create_task(c.post("/score", json=body))  # taken by the worker, held at the gate
            await _wait_for(lambda: app.state.scoring.batcher._busy)
            queued = [asyncio.create_task(c.post("/score", json=body)) for _ in range(2)]
            await _wait_for(lambda: app.state.scoring.batcher.pending_pairs == 4)
            refused = await c.post("/score", json=body)
            backend.gate.set()
            done = await asyncio.gather(first, *queued)
            return refused, done

    refused, done = asyncio.run(main())
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200, 200, 200]


def test_deadline_503_and_expired_work_never_runs(tiny_backend):
    app, backend = _gated_app(tiny_backend, request_timeout_s=0.3, max_batch_pairs=1, max_wait_ms=0)

    async def main():
        async with running(app) as c:
            tasks = [asyncio.create_task(c.post("/score", json={"query": QUERY, "documents": [d]})) for d in "abcdef"]
            responses = await asyncio.gather(*tasks)
            backend.gate.set()
            await _wait_for(lambda: not app.state.scoring.batcher._busy)
            await asyncio.sleep(0.05)
            after = await c.post("/score", json={"query": QUERY, "documents": ["z"]})
            return responses, after

    responses, after = asyncio.run(main())
    assert [r.status_code for r in responses] == [503] * 6
    assert all("deadline" in r.json()["detail"] for r in responses)
    # Only the first job reached the model (it was already running); the five queued ones were dropped.
    assert backend.scored == 1 + 1
    assert after.status_code == 200


def test_many_cancellations_do_not_leak_work(tiny_backend):
    app, backend = _gated_app(tiny_backend, max_batch_pairs=1, max_wait_ms=0)

    async def main():
        async with running(app) as c:
            first = asyncio.create_task(c.post("/score", json={"query": QUERY, "documents": ["a"]}))
            await _wait_for(lambda: app.state.scoring.batcher._busy)
            tasks = [
                asyncio.create_task(c.post("/score", json={"query": QUERY, "documents": ["b", "c"]})) for _ in range(50)
            ]
            await _wait_for(lambda: app.state.scoring.batcher.pending_pairs == 100)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            backend.gate.set()
            assert (await first).status_code == 200
            await _wait_for(lambda: app.state.scoring.batcher.pending_pairs == 0)
            ok = await c.post("/score", json={"query": QUERY, "documents": ["d"]})
            return ok

    ok = asyncio.run(main())
    assert ok.status_code == 200
    assert backend.scored == 2  # the 100 cancelled pairs never reached the model


def test_shutdown_drains_in_flight_requests(tiny_backend):
    app, backend = _gated_app(tiny_backend, max_batch_pairs=1, max_wait_ms=0, drain_timeout_s=10)

    async def main():
        cm = running(app)
        c = await cm.__aenter__()
        task = asyncio.create_task(c.post("/score", json={"query": QUERY, "documents": ["a"]}))
        await _wait_for(lambda: app.state.scoring.batcher._busy)
        asyncio.get_running_loop().call_later(0.2, backend.gate.set)
        await cm.__aexit__(None, None, None)  # shutdown waits for the running batch
        assert app.state.ready is False
        return await task

    assert asyncio.run(main()).status_code == 200
    assert backend.scored == 1
