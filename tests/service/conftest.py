"""Service test fixtures: a tiny torch backend (session-scoped, read-only) and app/client factories."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_helpers import make_backend, settings

from service.app import create_app
from service.backends.torch_backend import TorchBackend


@pytest.fixture(scope="session")
def tiny_backend(_tiny_models) -> TorchBackend:
    model, tok = _tiny_models["qwen3"]
    return make_backend(model, tok)


@pytest.fixture
def make_client(tiny_backend) -> Iterator[Any]:
    """make_client(backend=None, **settings) -> a started TestClient (lifespan run, warmed up)."""
    clients: list[TestClient] = []

    def make(backend: Any = None, **kw: Any) -> TestClient:
        client = TestClient(create_app(settings(**kw), backend or tiny_backend))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
