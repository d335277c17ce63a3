"""The torch backend's GPU path, on a machine without a GPU: with CUDA reported available (mocked), `--device
auto` picks CUDA and bf16 and hands the model to service/backends/cuda.py; a CPU-only process never imports that
module; `--device cuda` without a GPU is a clear error; /info says where the model runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afrl.testing import save_tiny_model
from service.backends import torch_backend
from service.backends.torch_backend import TorchBackend, resolve_device, resolve_dtype


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("cuda") / "tiny")


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports one GPU with bf16; moving a model there is recorded instead of done."""
    import service.backends.cuda as cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    moved: list = []
    monkeypatch.setattr(cuda, "place_on_cuda", lambda model, index=0: moved.append(model) or torch.device("cuda", 0))
    return moved


def test_auto_picks_cuda_and_bf16_when_torch_reports_a_gpu(tiny_dir, fake_gpu, monkeypatch):
    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: False)  # the GPU decides, not the CPU
    backend = TorchBackend.from_spec(str(tiny_dir), dtype="auto", threads=1, device="auto")
    assert fake_gpu == [backend.model]
    assert next(backend.model.parameters()).dtype == torch.bfloat16


def test_a_cpu_server_on_a_gpu_machine_decides_its_dtype_by_the_cpu(tiny_dir, fake_gpu, monkeypatch):
    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: False)
    backend = TorchBackend.from_spec(str(tiny_dir), dtype="auto", threads=1, device="cpu")
    assert fake_gpu == [] and next(backend.model.parameters()).dtype == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("fp32", "cuda") == torch.float32


def test_place_on_cuda_moves_the_model_and_enables_tf32(monkeypatch):
    from service.backends.cuda import place_on_cuda

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    precision = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", precision.append)
    calls = []

    class Model:
        config = type("C", (), {"_attn_implementation": "sdpa"})()

        def to(self, device):
            calls.append(device)

    assert place_on_cuda(Model()) == torch.device("cuda", 0)
    assert calls == [torch.device("cuda", 0)] and precision == ["high"]


def test_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda, but torch sees no GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="device 'tpu'"):
        resolve_device("tpu")


def test_a_cpu_only_process_never_imports_the_cuda_module(tiny_dir):
    probe = (
        "import sys, json\nfrom service.backends import load_backend\nfrom service.settings import Settings\n"
        f"b = load_backend(Settings(model={str(tiny_dir)!r}, backend='torch', threads=1, warmup=False))\n"
        "print(json.dumps([b.runtime_info(), 'service.backends.cuda' in sys.modules]))"
    )
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto serves on it")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    info, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported is False
    assert info["device"] == "cpu" and info["threads"] == 1 and info["dtype"] in ("float32", "bfloat16")
