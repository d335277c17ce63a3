"""Inference backends (torch, onnxruntime) behind one small Protocol; `load_backend` picks one from settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.backends.base import Backend, ExplainEvent, ScoreStep, StreamEnd, TextDelta

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["Backend", "ExplainEvent", "ScoreStep", "StreamEnd", "TextDelta", "load_backend"]

log = logging.getLogger(__name__)


def load_backend(settings: Settings) -> Backend:
    """Load the model named by the settings; heavy imports happen here, not at import time."""
    from afrl.lean_imports import skip_unused_transformers_extras

    skip_unused_transformers_extras()  # before transformers' model modules load: ~100 MB (afrl/lean_imports.py)
    if settings.backend == "auto":
        from service.backend_choice import choose

        choice = choose(settings)
        log.info("backend auto: %s (%s)", choice.backend, choice.reason)
        backend = _load(settings, choice.backend, choice.model, choice.explain_with)
        backend.chosen = choice.reason  # type: ignore[attr-defined]  # both backends define it (None)
        return backend
    return _load(settings, settings.backend, settings.model)


def _load(settings: Settings, kind: str, model: str, explain_with: str | None = None) -> Backend:
    if kind == "onnx":
        from service.backends.onnx_backend import OnnxBackend

        return OnnxBackend.from_dir(
            model, providers=settings.onnx_providers, threads=settings.threads, explain_with=explain_with
        )
    from service.backends.torch_backend import TorchBackend

    return TorchBackend.from_spec(model, dtype=settings.dtype, threads=settings.threads, device=settings.device)
