"""The onnxruntime backend against the torch backend on the same tiny model (exported with export/).

Stated tolerance: identical grades, probabilities within 1e-4 (fp32 graph vs fp32 torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import make_backend, settings

from service.app import create_app
from service.backends.onnx_backend import OnnxBackend

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # a real export with the decoder: about 30 s

QUERY = "population of berlin"
DOCS = ["Berlin had 3,520,031 inhabitants in 2015.", "running shoes for men", "a phone case", "hiking boots " * 30]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(_tiny_models, tmp_path_factory) -> tuple[Path, object]:
    from export.pipeline import ExportOptions, export_scorer_model

    model, tok = _tiny_models["qwen3"]
    torch_backend = make_backend(model, tok)
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    export_scorer_model(torch_backend.scorer, "tiny-qwen3", ExportOptions(out=out, threads=1, overwrite=True))
    return out, torch_backend


def test_onnx_and_torch_backends_agree(exported):
    out, torch_backend = exported
    onnx_backend = OnnxBackend.from_dir(str(out), providers="cpu", threads=1)
    with (
        TestClient(create_app(settings(backend="onnx"), onnx_backend)) as onnx_client,
        TestClient(create_app(settings(), torch_backend)) as torch_client,
    ):
        body = {"query": QUERY, "documents": DOCS}
        a = onnx_client.post("/score", json=body).json()["results"]
        b = torch_client.post("/score", json=body).json()["results"]
        assert [x["grade"] for x in a] == [x["grade"] for x in b]
        np.testing.assert_allclose([x["probabilities"] for x in a], [x["probabilities"] for x in b], atol=TOLERANCE)
        assert [x["truncated"] for x in a] == [False, False, False, True]

        explained = onnx_client.post("/explain", json={"query": QUERY, "document": DOCS[0], "stream": False}).json()
        torch_explained = torch_client.post(
            "/explain", json={"query": QUERY, "document": DOCS[0], "stream": False}
        ).json()
        assert explained["score"]["grade"] == torch_explained["score"]["grade"]
        assert explained["done"]["text"].startswith(str(explained["score"]["grade"]))
        assert 1 <= explained["done"]["completion_tokens"] <= 8
        info = onnx_client.get("/info").json()
        assert info["backend"] == "onnx" and info["runtime"]["device"] == "CPUExecutionProvider"
        assert info["runtime"]["scorer"] in ("fp32", "int8")


def test_onnx_backend_refuses_a_non_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="export folder"):
        OnnxBackend.from_dir(str(tmp_path / "missing"))


def test_reranker_over_the_onnx_export_ranks_like_torch(exported):
    """`afrl.Reranker(folder, backend="onnx")` loads the export the way `afrl serve --backend onnx` does."""
    from afrl import Reranker

    out, torch_backend = exported
    with (
        Reranker(str(out), backend="onnx", threads=1, max_new_tokens=6) as onnx_reranker,
        Reranker(torch_backend, max_new_tokens=6) as torch_reranker,
    ):
        assert onnx_reranker.backend.name == "onnx"
        a, b = onnx_reranker.rank(QUERY, DOCS), torch_reranker.rank(QUERY, DOCS)
        assert [h["corpus_id"] for h in a] == [h["corpus_id"] for h in b]
        assert [h["grade"] for h in a] == [h["grade"] for h in b]
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=TOLERANCE)
        explanation = onnx_reranker.explain(QUERY, DOCS[0])
        text = "".join(explanation)
        assert explanation.result is not None and explanation.result["text"].startswith(str(explanation.grade))
        assert isinstance(text, str) and explanation.result["completion_tokens"] <= 6


def test_a_scorer_only_export_serves_scores_and_answers_explain_with_501(tmp_path):
    """An export made without its decoder (`--no-decoder`): the server starts (warm-up skips the explanation),
    scores like torch, and /explain is a plain 501 that says what to do."""
    from afrl.testing import build_tiny_model
    from export.pipeline import ExportOptions, export_scorer_model

    model, tok = build_tiny_model("bert")
    torch_backend = make_backend(model, tok)
    options = ExportOptions(out=tmp_path, threads=1, overwrite=True, decoder=False)
    export_scorer_model(torch_backend.scorer, "tiny-bert", options)
    onnx_backend = OnnxBackend.from_dir(str(tmp_path), providers="cpu", threads=1)
    assert onnx_backend.can_explain is False
    with TestClient(create_app(settings(backend="onnx"), onnx_backend)) as client:  # lifespan: warm-up runs
        scored = client.post("/score", json={"query": QUERY, "documents": DOCS[:2]})
        assert scored.status_code == 200
        want = [r.grade for r in torch_backend.scorer.score([(QUERY, d) for d in DOCS[:2]])]
        assert [x["grade"] for x in scored.json()["results"]] == want
        for stream in (False, True):
            explained = client.post("/explain", json={"query": QUERY, "document": DOCS[0], "stream": stream})
            assert explained.status_code == 501
            assert "--backend torch" in explained.json()["detail"]


def test_both_kinds_of_export_explain_as_the_torch_backend_does(exported, tmp_path):
    """The ONNX backend decodes through the same constrained loop as the torch backend, with optimum's decoder
    (a causal LM) and with a prefix LM's own decoder graph: the same text, and it parses."""
    import threading

    from afrl.contract import parse_completion
    from afrl.testing import build_tiny_model
    from export.pipeline import ExportOptions, export_scorer_model
    from service.backends.base import StreamEnd, TextDelta

    qwen3_out, qwen3_torch = exported
    model, tok = build_tiny_model("bert")
    bert_torch = make_backend(model, tok)
    export_scorer_model(bert_torch.scorer, "tiny-bert", ExportOptions(out=tmp_path, threads=1, overwrite=True))
    for out, torch_backend in ((qwen3_out, qwen3_torch), (tmp_path, bert_torch)):
        onnx_backend = OnnxBackend.from_dir(str(out), providers="cpu", threads=1)
        assert onnx_backend.can_explain
        prompt = torch_backend.builder.build(QUERY, DOCS[0])
        streams = [list(b.explain(prompt, 120, threading.Event())) for b in (torch_backend, onnx_backend)]
        texts = ["".join(e.text for e in events if isinstance(e, TextDelta)) for events in streams]
        assert texts[0] == texts[1], out
        assert parse_completion(texts[1], DOCS[0]).consistent, texts[1]
        assert isinstance(streams[1][-1], StreamEnd) and streams[1][-1].reason == "eos"
