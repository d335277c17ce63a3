"""Exception handlers: every refusal is JSON with a `detail` that says what is wrong and what to do.

400 a body that cannot be parsed at all (not UTF-8, nested too deeply), 413 too many documents, 422 bad input
(FastAPI's validation, malformed JSON included, plus contract errors such as a bad or too long instruction),
429 queue full (with Retry-After), 501 /explain on a backend that cannot explain (a scorer-only ONNX export), 503
deadline passed or shutting down, 499 (seen by nobody: the client had
left) and 500 for anything unexpected (logged with the request id, never a crashed worker).

Every body goes through `SafeJSONResponse`: ASCII-escaped, so a lone surrogate in an echoed string cannot fail
to encode, and with non-finite numbers (JSON has no NaN or Infinity, but Python's parser accepts them) turned
into strings. The validation handler replaces FastAPI's default, which echoes each error's `input` and `ctx`
back and so turned `"top_n": NaN` or `"query": "\ud800"` into a 500.

A request in the text-embeddings-inference or vLLM shape gets its errors in that shape's convention, with the
same status codes (service/shapes.py).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from afrl.contract import ContractError
from service import shapes
from service.backends.base import ExplanationUnavailableError
from service.batcher import DeadlineError, QueueFullError, ShuttingDownError
from service.cancellation import CLIENT_CLOSED_REQUEST, ClientDisconnected
from service.scoring import TooManyDocumentsError

log = logging.getLogger(__name__)

# Documented in the OpenAPI spec of every model endpoint.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "missing or wrong bearer API key"},
    400: {"description": "the body could not be parsed at all (not UTF-8, or nested too deeply)"},
    408: {"description": "the request body stalled for AFRL_BODY_TIMEOUT_S; the connection is closed"},
    413: {"description": "more documents than AFRL_MAX_DOCUMENTS, or a body over AFRL_MAX_BODY_BYTES"},
    422: {
        "description": "empty, wrongly typed or non-finite fields, or an instruction over AFRL_MAX_INSTRUCTION_TOKENS; "
        "`detail[].loc` names the field"
    },
    429: {"description": "the queue is full; retry after the Retry-After header's seconds"},
    501: {"description": "/explain on a backend without an explanation decoder (a scorer-only ONNX export)"},
    503: {"description": "the request passed its deadline, or the server is shutting down"},
}


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as a string ("nan", "inf"), recursively; JSON cannot carry them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that can always be encoded: ASCII escapes (lone surrogates survive) and no NaN."""

    def render(self, content: Any) -> bytes:
        return json.dumps(json_safe(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's validation errors without the echoed input: `loc`, `msg` and `type` say what to fix.

    The input is dropped on purpose: it is the caller's own data (possibly megabytes of it), and it is what
    could not be serialised. JSON decoding errors keep their position in `ctx`.
    """
    out = []
    for e in errors:
        item: dict[str, Any] = {
            "loc": shapes.clean_loc(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        ctx = e.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in ctx.items()}
        out.append(item)
    return out


def error_response(
    request: Request, status: int, detail: Any, headers: dict[str, str] | None = None, body: Any = None
) -> JSONResponse:
    """An error in the convention of the request's API shape (`detail` unless it is a TEI or vLLM request)."""
    content = shapes.error_content(shapes.of_request(request, body), status, detail)
    return SafeJSONResponse(content, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, validation_details(exc.errors()), body=exc.body)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> JSONResponse:
        return error_response(request, CLIENT_CLOSED_REQUEST, str(exc))

    @app.exception_handler(TooManyDocumentsError)
    async def _too_many(request: Request, exc: TooManyDocumentsError) -> JSONResponse:
        return error_response(request, 413, str(exc))

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DeadlineError)
    async def _deadline(request: Request, exc: DeadlineError) -> JSONResponse:
        return error_response(request, 503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(ShuttingDownError)
    async def _shutdown(request: Request, exc: ShuttingDownError) -> JSONResponse:
        return error_response(request, 503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(ExplanationUnavailableError)
    async def _no_explanations(request: Request, exc: ExplanationUnavailableError) -> JSONResponse:
        return error_response(request, 501, str(exc))

    @app.exception_handler(ContractError)
    async def _contract(request: Request, exc: ContractError) -> JSONResponse:
        return error_response(request, 422, [{"loc": ["body", "instruction"], "msg": str(exc)}])

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None)
        log.exception("unhandled error", extra={"request_id": rid})
        return error_response(request, 500, f"internal error (request id {rid}); see the server log")
