"""The embedded real model behind the service (slow: loads SmolLM2-135M, a few seconds)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_helpers import settings

from service.app import create_app


@pytest.mark.slow
def test_default_base_serves_score():
    from afrl.scorer import load_scorer

    app = create_app(settings(model="default-base", dtype="fp32", warmup=True))
    with TestClient(app) as client:
        assert client.get("/ready").json() == {"ready": True, "backend": "torch", "model": "default-base"}
        body = {"query": "population of berlin", "documents": ["Berlin had 3,520,031 inhabitants in 2015.", "shoes"]}
        results = client.post("/score", json=body).json()["results"]
    reference = load_scorer("default-base").score([(body["query"], d) for d in body["documents"]])
    assert [r["probabilities"] for r in results] == [pytest.approx(x.probabilities, abs=1e-4) for x in reference]
