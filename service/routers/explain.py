"""POST /explain: Server-Sent Events `score` (before any explanation token), `delta`..., `done`; or one JSON.

Errors that happen after the stream has started (deadline, shutdown, backend failure) arrive as an `error` event
with a `status` field, since the HTTP status has already been sent: every stream ends with `done` or `error`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.backends.base import EXPLAIN_UNAVAILABLE, ExplanationUnavailableError, can_explain
from service.batcher import DeadlineError, ShuttingDownError
from service.cancellation import until_disconnect
from service.deps import ApiKey, ExplainerDep, ScoringDep, SettingsDep
from service.errors import ERROR_RESPONSES
from service.schemas import ExplainDone, ExplainRequest, ExplainResponse, GradeOut

log = logging.getLogger(__name__)

router = APIRouter(tags=["explain"], dependencies=[ApiKey], responses=ERROR_RESPONSES)

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream: events `score`, `delta` (repeated), `done` (or `error`); with "
        '"stream": false, one JSON object',
        "content": {
            "text/event-stream": {
                # Before OpenAPI 3.2 (FastAPI writes 3.1), `schema` of an event stream describes one event.
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["score", "delta", "done", "error"]},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "description": "score: GradeOut; delta: {text}; done: ExplainDone; error: {status, detail}",
                        },
                    },
                }
            }
        },
    }
}


@router.post("/explain", response_model=ExplainResponse, responses=_SSE_DOC, summary="Score, then explain")
async def explain(
    body: ExplainRequest, request: Request, scoring: ScoringDep, explainer: ExplainerDep, settings: SettingsDep
) -> Any:
    started = getattr(request.state, "started", time.monotonic())
    if not can_explain(explainer.backend):  # before any work: a plain 501, not an error event mid-stream
        raise ExplanationUnavailableError(EXPLAIN_UNAVAILABLE)
    prompt = (await scoring.build([(body.query, body.document)], body.instruction))[0]
    explainer.admit()
    max_new = min(body.max_new_tokens or settings.max_new_tokens, settings.max_new_tokens)
    events = explainer.events(prompt, body.document, max_new, started)
    if not body.stream:
        # Without a stream nobody notices a disconnect: until_disconnect cancels the generation (stop flag).
        collected = await until_disconnect(request, _collect(events))
        return ExplainResponse(score=GradeOut(**collected["score"]), done=ExplainDone(**collected["done"]))
    return EventSourceResponse(_sse(events, request.state.request_id), ping=15)


async def _collect(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    collected: dict[str, Any] = {}
    try:
        async for name, payload in events:
            collected[name] = payload
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # sets the stop flag when cancelled mid-way
    return collected


async def _sse(events: AsyncIterator[tuple[str, dict[str, Any]]], request_id: str) -> AsyncIterator[ServerSentEvent]:
    try:
        async for name, payload in events:
            yield ServerSentEvent(data=json.dumps(payload), event=name)
    except (DeadlineError, ShuttingDownError) as e:
        yield ServerSentEvent(data=json.dumps({"status": 503, "detail": str(e)}), event="error")
    except Exception as e:
        log.exception("explanation failed", extra={"request_id": request_id})
        yield ServerSentEvent(data=json.dumps({"status": 500, "detail": f"explanation failed: {e}"}), event="error")
    finally:
        await events.aclose()  # type: ignore[attr-defined]
