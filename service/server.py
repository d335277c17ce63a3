"""How `afrl serve` runs uvicorn: a drain on SIGTERM before uvicorn's own shutdown, and a request-head timeout.

Drain. Uvicorn's shutdown (0.54, `Server.shutdown`) closes the listening sockets first, then waits for open
connections (up to `timeout_graceful_shutdown`), and only then runs the lifespan shutdown: so /ready could never
answer false, and sse-starlette's exit listener, which watches uvicorn's `should_exit`, cut every open stream
~0.5 s after SIGTERM with no final event and no terminating chunk. `DrainingServer.shutdown` adds a phase before
uvicorn's: /ready turns false (503), new work gets 503, in-flight requests and streams may finish for up to
`drain_timeout_s`, and whatever is still open then is cut cleanly (a stream with an `error` event, a scoring job
with 503, each counted in `afrl_cancelled_total{reason="shutdown"}`). Then uvicorn closes its sockets and waits
`FLUSH_S` (its `timeout_graceful_shutdown`) for the cut responses to be written. sse-starlette's own listener is
turned off, since it would cut streams at once. A second Ctrl-C (uvicorn's `force_exit`) skips the wait.

Request-head timeout. Uvicorn's h11 protocol arms no timer before a first response, and any byte received
cancels its keep-alive timer, so a client that stops in the middle of its request line or headers holds the
connection forever; the ASGI app never sees it, since no request exists yet. `header_timeout_protocol` adds one
timer: from the connection's start, and again after each response, a complete request head must arrive within
`header_timeout_s`, else the client gets 408 (when it sent part of a head) and the connection is closed. It
bounds the whole head, not the gap between bytes, so trickling one byte at a time does not extend it.
(`h11_max_incomplete_event_size` only bounds the head's size, and `timeout_keep_alive` only idle connections.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

log = logging.getLogger(__name__)

FLUSH_S = 2  # uvicorn's graceful timeout after the drain: cut responses only need to be written


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains the app (see the module docstring) before it stops listening."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float):
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s
        # sse-starlette would cancel every stream as soon as `should_exit` is set; the drain ends them instead.
        AppStatus.disable_automatic_graceful_drain()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.drain()
        await super().shutdown(sockets)

    async def drain(self) -> None:
        state = self.app.state
        state.ready = False
        services = getattr(state, "services", None)
        if services is None:  # the lifespan never got as far as starting them
            return
        services.stop_taking_work()
        tasks = self.server_state.tasks  # uvicorn's request tasks: what is in flight
        log.info(
            "shutting down: /ready is false; draining %d in-flight request(s) for up to %g s (AFRL_DRAIN_TIMEOUT_S)",
            len(tasks),
            self.drain_timeout_s,
        )
        end = time.monotonic() + self.drain_timeout_s
        while tasks and not self.force_exit and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if tasks:
            cut = services.cut()
            log.warning("drain window over: cut %d stream(s) and scoring job(s) still in flight", cut)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a whole request head arrived (h11 parsed the Request)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's head must arrive in time too (unless it was pipelined and is already parsed).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        if partial:  # a request was begun: say why it is closed (with no bytes at all there is nobody to tell)
            log.warning("closing a connection whose request head stalled for %g s", self.header_timeout_s)
            self.transport.write(_timeout_response(self.header_timeout_s))
        self.transport.close()


def _timeout_response(timeout_s: float) -> bytes:
    """A raw 408: h11 cannot write a response before it has parsed a request."""
    detail = f"the request headers did not arrive within {timeout_s:g} s (AFRL_HEADER_TIMEOUT_S); closing"
    body = json.dumps({"detail": detail}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`; uvicorn builds it with its own arguments only."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config `afrl serve` uses (tests pass `port=`): h11 with the head timeout, our logging."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep our JSON logging
        "lifespan": "on",
        "http": header_timeout_protocol(settings.header_timeout_s),
        "timeout_graceful_shutdown": FLUSH_S,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def serve(app: FastAPI, settings: Settings) -> bool:
    """Run until SIGTERM / Ctrl-C, draining on the way out; False when the server never started."""
    server = DrainingServer(uvicorn_config(app, settings), app, settings.drain_timeout_s)
    server.run()
    return server.started
