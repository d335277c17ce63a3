"""Test helpers: a real uvicorn server in a thread (configured as `afrl serve` configures it), a real `afrl serve`
process, an in-process async client with the lifespan run, and a backend wrapper that can hold inference at a
gate (to fill queues and pass deadlines deterministically)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from afrl.contract import GradeScale, PromptBuilder
from afrl.scorer import TorchScorer
from service.backends.base import ScoreStep, StreamEnd, TextDelta
from service.backends.torch_backend import TorchBackend
from service.server import DrainingServer, uvicorn_config
from service.settings import Settings

HERE = Path(__file__).resolve().parent

# the query and documents the API, shape and Reranker tests rank (one relevant, the rest not, one prompt-like)
QUERY = "population of berlin"
DOCS = [
    "Berlin had a population of 3,520,031 registered inhabitants in 2015.",
    "running shoes for men size 42",
    "a phone case",
    "waterproof hiking boots for the new model",
    "Query: Document: relevance",
]


def make_backend(model: Any, tok: Any, max_query_tokens: int = 16, max_document_tokens: int = 48) -> TorchBackend:
    builder = PromptBuilder(tok, max_query_tokens=max_query_tokens, max_document_tokens=max_document_tokens)
    return TorchBackend(TorchScorer(model, tok, builder, GradeScale()), model_name="tiny-qwen3")


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"log_json": False, "max_new_tokens": 8, "max_wait_ms": 2.0}
    base.update(kw)
    return Settings(**base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app under a real uvicorn server on a free port; yields its base URL once it is ready."""
    port = free_port()
    settings = app.state.settings
    server = DrainingServer(uvicorn_config(app, settings, port=port), app, settings.drain_timeout_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def afrl_serve(log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `afrl serve` process (tests/service/serve_tiny.py: the tiny model, endless explanations) with the
    given AFRL_* variables; yields (base URL, process) once /ready is true. Killed on the way out if still alive."""
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "AFRL_WARMUP": "false", "AFRL_LOG_JSON": "false"}
    environ.pop("AFRL_API_KEY", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve_tiny.py"), str(port)], env={**environ, **env}, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"afrl serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"afrl serve not ready:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process async client (same event loop as the app) with the app's lifespan started."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class GatedBackend:
    """Delegates to a real backend, but scoring waits for `gate` and explanations stream until stopped."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.gate = threading.Event()
        self.scored = 0  # prompts that actually reached the model
        self.generation_stopped = threading.Event()
        self.deltas = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def grade_logits(self, prompts: Any) -> Any:
        assert self.gate.wait(30), "test gate never opened"
        self.scored += len(prompts)
        return self.inner.grade_logits(prompts)

    def grade_logits_shared_prefix(self, prompts: Any, prefix_len: int) -> Any:
        return None

    def explain(self, prompt: Any, max_new_tokens: int, stop: threading.Event) -> Iterator[Any]:
        yield ScoreStep(self.inner.grade_logits([prompt])[0])
        for _ in range(10_000):  # endless for a test: only the stop flag ends it
            if stop.is_set():
                self.generation_stopped.set()
                yield StreamEnd("cancelled")
                return
            self.deltas += 1
            yield TextDelta("x")
            time.sleep(0.005)
        yield StreamEnd("length")
