"""One pure-ASGI middleware for what every request needs: an id, a body-size limit, timing, metrics, a log line.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers streaming responses and mishandles client
disconnects; /explain streams, and a disconnect must reach it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("afrl.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client_id = headers.get("x-request-id", "")
        request_id = client_id if _SAFE_ID.match(client_id) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started
        status = {"code": 500}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [
                    (b"x-request-id", request_id.encode()),
                    (b"x-process-time-ms", f"{(time.monotonic() - started) * 1000:.3f}".encode()),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            body_receive = await self._buffer_body(scope, receive, headers)
            if body_receive is None:
                await self._too_large(send_with_headers)
                return
            await self.app(scope, body_receive, send_with_headers)
        finally:
            self._record(scope, status["code"], started, request_id)

    async def _buffer_body(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> Receive | None:
        """Read the whole body up to the limit (None when over it), then replay it to the app.

        Bodies are small JSON; reading them first means an oversized or endless upload is refused before any
        parsing, whether or not it declared a Content-Length.
        """
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                pending: list[Message] = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay() -> Message:
            # After the body, pass through to the server so a later disconnect still reaches the app.
            return pending.pop(0) if pending else await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"request body over {self.max_body_bytes} bytes; send fewer or shorter documents"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"  # a route template: bounded label cardinality
        elapsed = time.monotonic() - started
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.metrics.request_latency.labels(endpoint=endpoint).observe(elapsed)
        state = scope.get("state", {})
        log.info(
            "%s %s %d",
            scope["method"],
            endpoint,
            status,
            extra={
                "request_id": request_id,
                "endpoint": endpoint,
                "method": scope["method"],
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "queue_ms": state.get("queue_ms"),
                "inference_ms": state.get("inference_ms"),
            },
        )
