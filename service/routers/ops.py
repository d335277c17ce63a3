"""Operational endpoints: /health (alive), /ready (model loaded and warmed up), /metrics, /info (the manifest)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ApiKey, SettingsDep
from service.schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "loading, warming up or shutting down"}},
    summary="The model is loaded and warmed up",
)
async def ready(request: Request) -> Any:
    state = request.app.state
    backend = getattr(state, "backend", None)
    body = Ready(
        ready=bool(getattr(state, "ready", False)),
        backend=getattr(backend, "name", None),
        model=getattr(backend, "model_name", None),
    )
    return body if body.ready else JSONResponse(body.model_dump(), status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", dependencies=[ApiKey], summary="The model's manifest and the serving limits")
async def info(request: Request, settings: SettingsDep) -> dict[str, Any]:
    backend = request.app.state.backend
    return {
        "model": backend.model_name,
        "backend": backend.name,
        # where and how it runs: torch device, dtype and attention; onnx providers and scorer graph
        "runtime": backend.runtime_info() if hasattr(backend, "runtime_info") else None,
        "manifest": backend.manifest(),
        "limits": settings.model_dump(
            include={
                "max_batch_pairs",
                "max_batch_tokens",
                "max_wait_ms",
                "max_queue_pairs",
                "max_documents",
                "max_body_bytes",
                "request_timeout_s",
                "max_new_tokens",
                "prefix_reuse",
            }
        ),
    }
