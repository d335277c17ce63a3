"""`--backend auto` (service/backend_choice.py): an export folder is served by onnx, a GPU or a CPU with native bf16
by torch, and any other CPU by the model's INT8 ONNX export, built once with its accuracy gate; a scorer-only
export then explains with the torch model, loaded on the first /explain (never at start)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import afrl.hardware
import export.pipeline
from afrl.testing import save_tiny_model
from service import backend_choice
from service.settings import Settings


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AFRL_CACHE_DIR", str(tmp_path / "afrl-cache"))
    return tmp_path / "afrl-cache"


def settings(model: Path, **kw) -> Settings:
    return Settings(model=str(model), backend="auto", threads=1, warmup=False, **kw)


def no_bf16_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: False)
    monkeypatch.setattr(backend_choice, "gpu_device_present", lambda: False)


def test_an_export_folder_goes_to_onnx_and_a_gpu_or_bf16_cpu_to_torch(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "scorer.onnx").write_bytes(b"")
    assert backend_choice.choose(settings(folder)).backend == "onnx"
    model = tmp_path / "model"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend_choice, "gpu_device_present", lambda: True)
    assert backend_choice.choose(settings(model)).reason == "torch sees a GPU: torch on CUDA"
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: True)
    cpu = backend_choice.choose(settings(model, device="cpu"))  # --device cpu: the GPU is not used
    assert cpu.backend == "torch" and "native bf16" in cpu.reason and cpu.model == str(model)


def test_torch_is_not_asked_about_a_gpu_where_no_gpu_device_file_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(backend_choice, "GPU_DEVICE_FILES", (str(tmp_path / "nvidia[0-9]*"),))
    assert not backend_choice.gpu_device_present()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("torch was asked"))
    monkeypatch.setattr(afrl.hardware, "cpu_has_native_bf16", lambda *a: True)
    assert backend_choice.choose(settings(tmp_path / "model")).backend == "torch"  # rule 3, torch never asked
    (tmp_path / "nvidia0").touch()
    assert backend_choice.gpu_device_present()


def test_a_cpu_without_bf16_gets_the_int8_export_once(tmp_path, cache, monkeypatch):
    no_bf16_cpu(monkeypatch)
    model = save_tiny_model(tmp_path / "tiny")
    choice = backend_choice.choose(settings(model))
    (folder,) = (cache / "serve").iterdir()
    if not (folder / backend_choice.REFUSED).is_file():
        assert choice.backend == "onnx" and choice.model == str(folder) and "INT8 ONNX" in choice.reason
        assert choice.explain_with is None  # a causal LM's export has its decoder
    else:  # the random tiny model's INT8 grades moved past the gate
        assert choice.backend == "torch" and "failed its accuracy gate" in choice.reason
    monkeypatch.setattr(export.pipeline, "export_model", lambda *a, **k: pytest.fail("exported twice"))
    assert backend_choice.choose(settings(model)) == choice


def test_int8_refused_by_its_gate_serves_torch_fp32(tmp_path, monkeypatch):
    no_bf16_cpu(monkeypatch)
    refusal = "INT8 refused on 32 check pairs: largest expected-grade score change 0.06 > allowed 0.05"
    monkeypatch.setattr(backend_choice, "int8_export", lambda spec, threads: (tmp_path, refusal))
    choice = backend_choice.choose(settings(tmp_path / "model"))
    assert choice.backend == "torch" and refusal in choice.reason and choice.reason.endswith("torch fp32")


@pytest.mark.parametrize("decoder", [True, False])
def test_the_onnx_choice_explains_with_what_it_loads_on_first_use(tmp_path, cache, monkeypatch, decoder):
    """A prefix LM's export holds its own decoder, loaded on the first /explain; an export without one (the
    prefix decoder failed its check) explains with the torch model, loaded on first use too. The warm-up loads
    neither."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    no_bf16_cpu(monkeypatch)
    # A random tiny model's INT8 grades may fail the gate; open it here, this test is about the lazy explainer.
    monkeypatch.setattr(
        export.pipeline,
        "ExportOptions",
        functools.partial(
            export.pipeline.ExportOptions, int8_min_agreement=0.0, int8_max_score_delta=1.0, decoder=decoder
        ),
    )
    model = save_tiny_model(tmp_path / "bert", arch="bert")
    key, before, after = (
        ("decoder", "on first /explain", "loaded") if decoder else ("explain_with", "(on first use)", "(loaded)")
    )
    with TestClient(create_app(Settings(model=str(model), backend="auto", threads=1, max_new_tokens=40))) as client:
        info = client.get("/info").json()
        assert info["backend"] == "onnx"
        runtime = info["runtime"]
        assert runtime["scorer"] == "int8" and "INT8 ONNX" in runtime["chosen"]
        assert runtime[key].endswith(before)  # the warm-up did not load it
        assert ("explain_with" in runtime) is not decoder
        body = {"query": "berlin population", "document": "Berlin has 3.7 million people.", "stream": False}
        score = client.post("/score", json={"pairs": [{"query": body["query"], "document": body["document"]}]})
        explained = client.post("/explain", json=body).json()
        assert explained["score"]["grade"] == score.json()["results"][0]["grade"]  # the ONNX scorer's grade
        assert explained["done"]["text"].startswith(str(explained["score"]["grade"]))
        assert client.get("/info").json()["runtime"][key].endswith(after)
