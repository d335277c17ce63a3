"""One pure-ASGI middleware for what every request needs: an id, the API key, a body-size limit, timing, metrics
(including the in-flight gauge), a log line, and a read timeout for stalled uploads.

The API key is checked here, before the body is read, so an unauthenticated caller gets 401 whatever it sends
(malformed JSON, an oversized body) and costs no parsing; the route dependency (service/deps.py) checks it
again and documents it in OpenAPI. Responses the middleware itself sends (401, 413) are labelled with the
path of the route they were meant for, so they do not disappear under `endpoint="unmatched"`.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers streaming responses and mishandles client
disconnects; /explain streams, and a disconnect must reach it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import UNAUTHORIZED, bearer_token, key_matches
from service.metrics import Metrics

log = logging.getLogger("afrl.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        api_key: str | None = None,
        protected_paths: frozenset[str] = frozenset(),
        known_paths: frozenset[str] = frozenset(),
        body_timeout_s: float = 30.0,
    ):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.protected_paths = protected_paths
        self.known_paths = known_paths | protected_paths
        self.body_timeout_s = body_timeout_s

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

        self.metrics.inflight.inc()
        try:
            if self._unauthorized(scope, headers):
                await _send_json(send_with_headers, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
                return
            try:
                body_receive = await self._buffer_body(scope, receive, headers)
            except TimeoutError:
                detail = f"the request body stalled for {self.body_timeout_s:g} s (AFRL_BODY_TIMEOUT_S); closing"
                await _send_json(send_with_headers, 408, detail, [(b"connection", b"close")])
                return
            if body_receive is None:
                detail = f"request body over {self.max_body_bytes} bytes; send fewer or shorter documents"
                await _send_json(send_with_headers, 413, detail)
                return
            await self.app(scope, body_receive, send_with_headers)
        finally:
            self.metrics.inflight.dec()
            self._record(scope, status["code"], started, request_id)

    def _unauthorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        if self.api_key is None or scope["path"] not in self.protected_paths:
            return False
        return not key_matches(self.api_key, bearer_token(headers.get("authorization", "")))

    async def _buffer_body(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> Receive | None:
        """Read the whole body up to the limit (None when over it), then replay it to the app.

        Bodies are small JSON; reading them first means an oversized or endless upload is refused before any
        parsing, whether or not it declared a Content-Length. A body whose next chunk does not arrive within
        `body_timeout_s` raises TimeoutError (408 upstream), so a slow-loris upload cannot hold a connection.
        """
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, size = [], 0
        while True:
            message = await asyncio.wait_for(receive(), timeout=self.body_timeout_s)
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

    def _record(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", None)  # a route template: bounded label cardinality
        if endpoint is None:  # refused here before routing (401, 413): the route it was meant for, if any
            endpoint = scope["path"] if scope["path"] in self.known_paths else "unmatched"
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


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
