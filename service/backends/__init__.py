"""Inference backends (torch, onnxruntime) behind one small Protocol; `load_backend` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.backends.base import Backend, ExplainEvent, ScoreStep, StreamEnd, TextDelta

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["Backend", "ExplainEvent", "ScoreStep", "StreamEnd", "TextDelta", "load_backend"]


def load_backend(settings: Settings) -> Backend:
    """Load the model named by the settings; heavy imports happen here, not at import time."""
    from afrl.lean_imports import skip_unused_transformers_extras

    skip_unused_transformers_extras()  # before transformers' model modules load: ~100 MB (afrl/lean_imports.py)
    if settings.backend == "onnx":
        from service.backends.onnx_backend import OnnxBackend

        return OnnxBackend.from_dir(settings.model, providers=settings.onnx_providers, threads=settings.threads)
    from service.backends.torch_backend import TorchBackend

    return TorchBackend.from_spec(
        settings.model, dtype=settings.dtype, threads=settings.threads, device=settings.device
    )
