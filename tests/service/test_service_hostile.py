"""Hostile and impatient clients against a real uvicorn server on loopback (issue: reliability).

Each test fails on the code before the fix: non-finite JSON numbers and lone surrogates gave 500 (the validation
handler echoed them back and could not encode them); a client that left, or a passed deadline, did not stop
the model work (checked by the backend's own pair counter and by `afrl_cancelled_total`); an instruction had
no token limit; the API key was checked after the body was parsed; 413s were counted as `unmatched`; SIGTERM cut
open SSE streams after ~0.4 s with no final event and an unterminated body, and /ready never answered 503; a
client that stopped in the middle of its request headers was never timed out. The last two run a real `afrl serve`
process (SIGTERM reaches uvicorn's handlers only in a main thread; the request head is read by uvicorn itself).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest
from service_helpers import GatedBackend, afrl_serve, make_backend, serve, settings

from service.app import create_app
from service.batcher import ShuttingDownError
from service.explainer import Explainer
from service.metrics import Metrics

QUERY = "population of berlin"
JSON = {"content-type": "application/json"}


class SlowBackend(GatedBackend):
    """Gate open, but every forward pass takes `pass_s`: a long job spans many passes, as on a real CPU."""

    def __init__(self, inner, pass_s: float = 0.1):
        super().__init__(inner)
        self.gate.set()
        self.pass_s = pass_s
        self._lock = threading.Lock()

    def grade_logits(self, prompts):
        time.sleep(self.pass_s)
        with self._lock:
            return super().grade_logits(prompts)


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def tiny(_tiny_models):
    model, tok = _tiny_models["qwen3"]
    return make_backend(model, tok)


NON_FINITE = [
    ("/rerank", b'{"query": "a", "documents": ["b"], "top_n": NaN}'),
    ("/rerank", b'{"query": "a", "documents": ["b"], "top_n": 1e400}'),
    ("/rerank", b'{"query": "a", "documents": ["b"], "top_n": -Infinity}'),
    ("/rerank", b'{"query": NaN, "documents": ["b"]}'),
    ("/rerank", b'{"query": "a", "documents": [NaN]}'),
    ("/score", b'{"query": "a", "documents": ["b"], "unknown": Infinity}'),
    ("/score", b'{"pairs": [{"query": "a", "document": Infinity}]}'),
    ("/explain", b'{"query": "a", "document": "b", "max_new_tokens": NaN}'),
    ("/explain", b'{"query": "a", "document": "b", "stream": NaN}'),
]
SURROGATES = [
    ("/score", b'{"query": "\\ud800 berlin", "documents": ["b"]}'),
    ("/score", b'{"pairs": [{"query": "a", "document": "\\udfff"}]}'),
    ("/rerank", b'{"query": "\\ud800 berlin", "documents": ["b"]}'),
    ("/rerank", b'{"query": "a", "documents": [{"text": "\\ud83d"}]}'),
    ("/explain", b'{"query": "\\ud800", "document": "b", "stream": false}'),
    ("/score", b'{"query": "a", "documents": ["b"], "instruction": "\\ud800 grade"}'),
]


def test_non_finite_numbers_and_lone_surrogates_are_422_not_500(tiny):
    app = create_app(settings(warmup=False), tiny)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for path, body in NON_FINITE + SURROGATES:
            r = c.post(path, content=body, headers=JSON)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
            detail = r.json()["detail"]
            assert detail and all("loc" in d and d["msg"] for d in detail), r.text
            assert "input" not in detail[0]  # the caller's data is never echoed back
        metrics = c.get("/metrics").text
        assert 'status="500"' not in metrics
        assert c.post("/score", json={"query": QUERY, "documents": ["b"]}).status_code == 200


def test_client_that_leaves_while_queued_costs_no_model_work(tiny):
    backend = GatedBackend(tiny)  # the gate is shut: the first job holds the worker
    app = create_app(settings(warmup=False, max_batch_pairs=4, max_wait_ms=0), backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        holder = threading.Thread(target=lambda: c.post("/score", json={"query": QUERY, "documents": ["a"]}))
        holder.start()
        deadline = time.monotonic() + 10
        while not app.state.scoring.batcher._busy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with httpx.Client(base_url=url, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/rerank", json={"query": QUERY, "documents": [f"doc {i}" for i in range(96)]})
        deadline = time.monotonic() + 10
        while 'reason="client_disconnected"' not in c.get("/metrics").text:
            assert time.monotonic() < deadline, "the disconnect was never noticed"
            time.sleep(0.02)
        backend.gate.set()
        holder.join(30)
        time.sleep(0.3)
        metrics = c.get("/metrics").text
    assert backend.scored == 1  # only the holder's pair: none of the 96 reached the model
    assert _metric(metrics, "afrl_cancelled_total", '{reason="client_disconnected"}') == 1
    assert _metric(metrics, "afrl_requests_total", '{endpoint="/rerank",status="499"}') == 1


def test_client_that_leaves_mid_job_stops_it_between_passes(tiny):
    backend = SlowBackend(tiny, pass_s=0.1)
    app = create_app(settings(warmup=False, max_batch_pairs=2, max_wait_ms=0, prefix_reuse=False), backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        with httpx.Client(base_url=url, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/rerank", json={"query": QUERY, "documents": [f"doc {i}" for i in range(100)]})
        time.sleep(0.5)
        stopped_at = backend.scored
        time.sleep(0.5)
        assert backend.scored == stopped_at, "passes kept running after the client left"
        assert c.post("/score", json={"query": QUERY, "documents": ["b"]}).status_code == 200
    assert stopped_at <= 30  # 0.5 s of 0.1 s passes of 2 pairs, plus slack; the full job is 100


def test_deadline_answers_503_and_cancels_the_rest_of_the_job(tiny):
    backend = SlowBackend(tiny, pass_s=0.1)
    app = create_app(
        settings(warmup=False, max_batch_pairs=2, max_wait_ms=0, prefix_reuse=False, request_timeout_s=0.5), backend
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/score", json={"query": QUERY, "documents": [f"doc {i}" for i in range(96)]})
        stopped_at = backend.scored
        time.sleep(0.5)
        metrics = c.get("/metrics").text
    assert r.status_code == 503 and r.headers["retry-after"]
    detail = r.json()["detail"]
    assert "deadline" in detail and "AFRL_REQUEST_TIMEOUT_S" in detail and "overloaded" not in detail
    assert backend.scored <= stopped_at + 2  # at most the pass that was running
    assert backend.scored < 96
    assert _metric(metrics, "afrl_cancelled_total", '{reason="deadline"}') == 1


def test_non_streamed_explain_stops_generating_when_the_client_leaves(tiny):
    backend = GatedBackend(tiny)
    app = create_app(settings(warmup=False, max_new_tokens=4096), backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        with httpx.Client(base_url=url, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/explain", json={"query": QUERY, "document": "d", "stream": False})
        assert backend.generation_stopped.wait(10), "generation kept running after the client left"
        deltas = backend.deltas
        time.sleep(0.2)
        assert backend.deltas == deltas
        assert app.state.explainer.active == 0
        assert c.get("/ready").json()["ready"] is True


def test_oversized_instruction_is_refused_with_its_limit(tiny):
    app = create_app(settings(warmup=False, max_instruction_tokens=32), tiny)
    long = "Grade the passage strictly. " * 40  # ~200 tokens, under the 8-characters-per-token shortcut
    huge = "x" * 60_000
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for instruction in (long, huge):
            for path, body in (
                ("/score", {"query": QUERY, "documents": ["a"]}),
                ("/rerank", {"query": QUERY, "documents": ["a"]}),
                ("/explain", {"query": QUERY, "document": "a", "stream": False}),
            ):
                r = c.post(path, json={**body, "instruction": instruction})
                assert r.status_code == 422, (path, r.text)
                (err,) = r.json()["detail"]
                assert err["loc"] == ["body", "instruction"]
                assert "32-token limit" in err["msg"] and "AFRL_MAX_INSTRUCTION_TOKENS" in err["msg"]
        ok = c.post("/score", json={"query": QUERY, "documents": ["a"], "instruction": "Grade the passage."})
        assert ok.status_code == 200


def test_api_key_is_checked_before_the_body_and_refusals_keep_their_endpoint(tiny):
    app = create_app(settings(warmup=False, api_key="s3cret", max_body_bytes=2048), tiny)
    auth = {"Authorization": "Bearer s3cret"}
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for body in (b'{"query": "q", "documents": [', b"\xff\xfe", b"[" * 5000):
            r = c.post("/score", content=body, headers=JSON)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert c.post("/score", content=b'{"query": "q", "documents": [', headers={**JSON, **auth}).status_code == 422
        assert c.post("/score", content=b"x" * 4096, headers={**JSON, **auth}).status_code == 413
        assert c.get("/health").status_code == 200
        metrics = c.get("/metrics").text
    assert _metric(metrics, "afrl_requests_total", '{endpoint="/score",status="401"}') == 3
    assert _metric(metrics, "afrl_requests_total", '{endpoint="/score",status="413"}') == 1
    assert "afrl_inflight_requests 1.0" in metrics  # the /metrics request itself


def test_stalled_upload_gets_408_and_its_connection_closed(tiny):
    app = create_app(settings(warmup=False, body_timeout_s=0.5), tiny)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                b'{"query": "a", "do'
            )
            started = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):  # the server answers, then closes: recv returns b""
                reply += chunk
            waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"AFRL_BODY_TIMEOUT_S" in reply
        assert waited < 5
        assert c.post("/score", json={"query": QUERY, "documents": ["b"]}).status_code == 200


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _read_to_close(s: socket.socket) -> bytes:
    reply = b""
    while chunk := s.recv(65536):  # b"" once the server has closed the connection
        reply += chunk
    return reply


def _dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked HTTP/1.1 response, and whether it ended with the terminating zero-size chunk."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return body, False


def _sse_events(body: bytes) -> list[tuple[str, str]]:
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], fields.get("data", "")))
    return events


def test_sigterm_drains_an_open_stream_then_ends_it_with_an_error_event(tmp_path):
    drain = 1.5
    log = tmp_path / "server.log"
    body = json.dumps({"query": QUERY, "document": "Berlin had 3.5 million inhabitants."}).encode()
    request = b"POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    with afrl_serve(log, AFRL_DRAIN_TIMEOUT_S=str(drain)) as (url, proc):
        with socket.create_connection(_address(url), timeout=drain + 5) as s:
            s.sendall(request)
            raw = b""
            while b"event: delta" not in raw:  # the explanation is streaming (it never ends by itself)
                chunk = s.recv(65536)
                assert chunk, raw
                raw += chunk
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest: list[bytes] = []
            reader = threading.Thread(target=lambda: rest.append(_read_to_close(s)))
            reader.start()
            ready: list[int | None] = []
            while reader.is_alive() and time.monotonic() - signalled < drain + 5:
                try:
                    ready.append(httpx.get(url + "/ready", timeout=1).status_code)
                except httpx.HTTPError:
                    ready.append(None)  # the drain is over and the port is closed
                time.sleep(0.1)
            reader.join(drain + 5)
            ended = time.monotonic() - signalled
        proc.wait(10)
    text = log.read_text()
    stream, terminated = _dechunk(raw + b"".join(rest))
    assert terminated, "the chunked body was not terminated"
    events = _sse_events(stream)
    assert [name for name, _ in events[:2]] == ["score", "delta"], events[:3]
    name, data = events[-1]
    assert name == "error", events[-3:]
    assert json.loads(data)["status"] == 503 and "shutting down" in json.loads(data)["detail"]
    assert drain - 0.3 < ended < drain + 3, ended  # it ran through the drain window, then was cut
    assert "cut 1 stream" in text, text[-2000:]  # after afrl_cancelled_total{reason="shutdown"} was counted
    assert "without completing response" not in text, text[-2000:]
    assert 503 in ready, ready  # reachable during the drain, and not ready
    assert 200 not in ready[ready.index(503) :], ready


def test_drain_refuses_new_explanations_and_cut_ends_open_ones_counted_as_shutdown(tiny):
    """The pieces the SIGTERM drain drives, in process: where the counter can be read after the cut."""

    async def main() -> str:
        metrics = Metrics()
        backend = GatedBackend(tiny)
        backend.gate.set()
        explainer = Explainer(backend, metrics, max_concurrent=1, timeout_s=30)
        prompt = tiny.builder.build_many([(QUERY, "d")])[0]
        events = explainer.events(prompt, "d", 4096, time.monotonic())
        assert (await anext(events))[0] == "score"
        explainer.stop_taking_work()
        with pytest.raises(ShuttingDownError):
            explainer.admit()
        assert (await anext(events))[0] == "delta"  # the open stream goes on during the drain
        assert explainer.cut() == 1
        with pytest.raises(ShuttingDownError, match="drain window"):
            async for _ in events:
                pass
        assert backend.generation_stopped.wait(5)
        explainer.close()
        return metrics.render().decode()

    assert _metric(asyncio.run(main()), "afrl_cancelled_total", '{reason="shutdown"}') == 1


def test_client_that_stalls_mid_headers_gets_408_and_is_closed(tmp_path):
    timeout = 0.5
    with afrl_serve(tmp_path / "server.log", AFRL_HEADER_TIMEOUT_S=str(timeout)) as (url, _):
        with socket.create_connection(_address(url), timeout=5) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the head
            started = time.monotonic()
            reply = _read_to_close(s)
            waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"AFRL_HEADER_TIMEOUT_S" in reply and b"connection: close" in reply.lower()
        assert timeout - 0.1 < waited < timeout + 2, waited
        with socket.create_connection(_address(url), timeout=5) as s:
            # after a first answer, the keep-alive connection's next head is held to the same deadline
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while b"}" not in first:
                first += s.recv(4096)
            s.sendall(b"GET /health HTTP/1.1\r\nHo")
            second = _read_to_close(s)
        assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 408"), (first, second)
        with socket.create_connection(_address(url), timeout=5) as s:
            started = time.monotonic()
            assert _read_to_close(s) == b""  # a connection that sends nothing is closed, with nothing to answer
            assert time.monotonic() - started < timeout + 2
        assert httpx.post(url + "/score", json={"query": QUERY, "documents": ["b"]}, timeout=10).status_code == 200
