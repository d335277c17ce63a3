"""One router per resource; handlers stay thin over `service.scoring` and `service.explainer`."""

from __future__ import annotations

from fastapi import Request, Response

from service.batcher import Timing


def timing_headers(request: Request, response: Response, timing: Timing) -> None:
    """X-Queue-Time-Ms and X-Inference-Time-Ms, also kept for the access log line."""
    request.state.queue_ms = round(timing.queue_s * 1000, 3)
    request.state.inference_ms = round(timing.inference_s * 1000, 3)
    response.headers["X-Queue-Time-Ms"] = f"{timing.queue_s * 1000:.3f}"
    response.headers["X-Inference-Time-Ms"] = f"{timing.inference_s * 1000:.3f}"
