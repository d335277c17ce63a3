"""Stop work when its client goes away: `await until_disconnect(request, coroutine)`.

Uvicorn does not cancel a handler whose client closed the connection; for a plain (non-streaming) response
nobody listens for `http.disconnect` until the answer is sent, so a request abandoned while queued would still
be scored in full. This races the handler's work against the connection's `receive()` (after the body has been
read, the only message left is `http.disconnect`): if the client leaves first, the work task is cancelled, which
cancels the batcher job or the explanation (service/batcher.py, service/explainer.py), and `ClientDisconnected`
is raised. Its handler answers 499 (nginx's "client closed request"), which only the access log and the
metrics see. Streaming responses need none of this: sse-starlette already cancels the stream on disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready; its work was cancelled."""


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The result of `work`, or ClientDisconnected (with `work` cancelled) when the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # nobody is left to tell about an error
        await task
    raise ClientDisconnected("the client closed the connection before the answer was ready")
