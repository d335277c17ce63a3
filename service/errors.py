"""Exception handlers: every refusal is JSON with a `detail` that says what is wrong and what to do.

413 too many documents, 422 bad input (FastAPI's validation, plus contract errors such as a bad instruction),
429 queue full (with Retry-After), 503 deadline passed or shutting down, 500 for anything unexpected (logged
with the request id, never a crashed worker).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from afrl.contract import ContractError
from service.batcher import DeadlineError, QueueFullError, ShuttingDownError
from service.scoring import TooManyDocumentsError

log = logging.getLogger(__name__)

# Documented in the OpenAPI spec of every model endpoint.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "missing or wrong bearer API key"},
    413: {"description": "more documents than AFRL_MAX_DOCUMENTS, or a body over AFRL_MAX_BODY_BYTES"},
    422: {"description": "empty or wrongly typed fields; `detail[].loc` names the field"},
    429: {"description": "the queue is full; retry after the Retry-After header's seconds"},
    503: {"description": "the request passed its deadline, or the server is shutting down"},
}


def install(app: FastAPI) -> None:
    @app.exception_handler(TooManyDocumentsError)
    async def _too_many(request: Request, exc: TooManyDocumentsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DeadlineError)
    async def _deadline(request: Request, exc: DeadlineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ShuttingDownError)
    async def _shutdown(request: Request, exc: ShuttingDownError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(ContractError)
    async def _contract(request: Request, exc: ContractError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", "instruction"], "msg": str(exc)}]}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None)
        log.exception("unhandled error", extra={"request_id": rid})
        return JSONResponse({"detail": f"internal error (request id {rid}); see the server log"}, status_code=500)
