"""Torch backend and batcher: prefix reuse equals the plain path, concurrent requests share passes, the stop flag
ends a generation, settings refuse bad values."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from pydantic import ValidationError
from service_helpers import make_backend, running, settings

from afrl.hardware import cpu_has_native_bf16
from service.app import create_app
from service.backends.base import ScoreStep, StreamEnd, TextDelta
from service.settings import Settings

QUERY = "what is the population of berlin"
DOCS = ["Berlin had 3,520,031 inhabitants.", "shoes", "a phone case for the new model " * 3, "boots", "x y z"]


def test_prefix_reuse_equals_plain_path(tiny):
    model, tok = tiny
    backend = make_backend(model, tok)
    prompts = backend.builder.build_many([(QUERY, d) for d in DOCS])
    plain = backend.grade_logits(prompts)
    shared = backend.grade_logits_shared_prefix(prompts, prompts[0].query_prefix_len)
    assert shared is not None
    np.testing.assert_allclose(shared, plain, atol=1e-4, rtol=0)
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # different documents give different logits
    # Prompts that do not share the prefix are refused, not silently mis-scored.
    mixed = backend.builder.build_many([(QUERY, "a"), ("other query", "b")])
    assert backend.grade_logits_shared_prefix(mixed, mixed[0].query_prefix_len) is None


def test_service_prefix_path_matches_reference(make_client, tiny_backend):
    client = make_client(prefix_reuse=True, prefix_reuse_min_documents=2)
    got = [
        x["probabilities"] for x in client.post("/score", json={"query": QUERY, "documents": DOCS}).json()["results"]
    ]
    ref = [r.probabilities for r in tiny_backend.scorer.score([(QUERY, d) for d in DOCS])]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_concurrent_requests_share_forward_passes(tiny_backend):
    app = create_app(settings(warmup=False, max_wait_ms=200, max_batch_pairs=64, prefix_reuse=False), tiny_backend)

    async def main():
        async with running(app) as c:
            bodies = [{"pairs": [{"query": QUERY, "document": d}]} for d in DOCS * 2]
            return await asyncio.gather(*(c.post("/score", json=b) for b in bodies))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    batch = app.state.metrics.batch_size.collect()[0]
    count = next(s.value for s in batch.samples if s.name.endswith("_count"))
    total = next(s.value for s in batch.samples if s.name.endswith("_sum"))
    assert total == 10 and count < 10  # ten one-pair requests ran in fewer passes than requests
    ref = tiny_backend.scorer.score([(QUERY, d) for d in DOCS * 2])
    assert [r.json()["results"][0]["score"] for r in responses] == pytest.approx([x.score for x in ref], abs=1e-4)


def test_token_budget_splits_passes(tiny_backend):
    app = create_app(settings(warmup=False, max_batch_tokens=700, prefix_reuse=False), tiny_backend)

    async def main():
        async with running(app) as c:
            return await c.post("/score", json={"query": QUERY, "documents": DOCS})

    r = asyncio.run(main())
    assert r.status_code == 200
    sizes = app.state.metrics.batch_tokens.collect()[0].samples
    assert next(s.value for s in sizes if s.name.endswith("_count")) >= 2


def test_explain_stop_flag_ends_generation(tiny_backend):
    prompt = tiny_backend.builder.build(QUERY, DOCS[0])
    stop = threading.Event()
    events = []
    for ev in tiny_backend.explain(prompt, 50, stop):
        events.append(ev)
        if isinstance(ev, TextDelta):
            stop.set()
    assert isinstance(events[0], ScoreStep)
    assert sum(isinstance(e, TextDelta) for e in events) == 1
    assert events[-1] == StreamEnd("cancelled")


def test_settings_from_env_and_refusals(monkeypatch):
    monkeypatch.setenv("AFRL_PORT", "9001")
    monkeypatch.setenv("AFRL_MAX_BATCH_PAIRS", "8")
    monkeypatch.setenv("AFRL_API_KEY", "k")
    s = Settings()
    assert (s.port, s.max_batch_pairs, s.host) == (9001, 8, "127.0.0.1")
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert Settings(port=9002).port == 9002  # explicit values (CLI flags) win over the environment
    monkeypatch.setenv("AFRL_BACKEND", "tensorflow")
    with pytest.raises(ValidationError, match="backend"):
        Settings()
    monkeypatch.delenv("AFRL_BACKEND")
    with pytest.raises(ValidationError, match="max_queue_pairs"):
        Settings(max_batch_pairs=100, max_queue_pairs=10)
    with pytest.raises(ValidationError, match="port"):
        Settings(port=70000)


def test_cli_registers_serve_and_refuses_bad_settings(capsys):
    from afrl.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--model", "default", "--port", "8123"])
    assert args.command == "serve" and args.port == "8123"
    assert main(["serve", "--port", "notaport"]) == 2
    assert "port" in capsys.readouterr().err


def test_cpu_bf16_detection(tmp_path):
    (tmp_path / "yes").write_text("flags\t: fpu sse avx512f amx_bf16 amx_tile\n")
    (tmp_path / "no").write_text("flags\t: fpu sse avx2\n")
    assert cpu_has_native_bf16(tmp_path / "yes") and not cpu_has_native_bf16(tmp_path / "no")
    assert not cpu_has_native_bf16(tmp_path / "missing")
