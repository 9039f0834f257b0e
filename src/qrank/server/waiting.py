"""Awaiting the engine for one client: the request's deadline and whether the client is still
there.

A request's time limit is the ``X-Request-Timeout`` header's (seconds), capped by the server's
``--request-timeout``; it runs from the request's arrival. :class:`DisconnectWatch` notices a
client that closes its connection while its request runs. Either way :func:`await_result`
stops waiting at once, and the caller drops the request's waiting pairs.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import Future
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TIMEOUT_HEADER = "X-Request-Timeout"
DISCONNECTED = "qrank.disconnected"  # scope key: an asyncio.Event set when the client is gone


class DeadlineExceeded(Exception):
    """The request is past its deadline."""


class ClientDisconnected(Exception):
    """The client closed the connection before its answer."""


def request_timeout(header: str | None, server_timeout: float | None) -> float | None:
    """Seconds this request may take: the header's value capped by the server's; None: no
    limit. A header that is not a positive number of seconds raises ValueError."""
    if header is None or not header.strip():
        return server_timeout
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"the {TIMEOUT_HEADER} header must be a positive number of seconds, "
                         f"not {header!r}")
    return value if server_timeout is None else min(value, server_timeout)


def past(deadline: float | None) -> bool:
    """Whether a ``time.monotonic()`` deadline has passed (None never does)."""
    return deadline is not None and time.monotonic() >= deadline


class DisconnectWatch:
    """ASGI middleware: once a request's body is read, a task awaits the server's next message,
    which is ``http.disconnect`` when the client goes away (or the answer is sent), and sets
    the event in ``scope[DISCONNECTED]``. Later reads by the app get that message too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = scope[DISCONNECTED] = asyncio.Event()
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def wrapped() -> Message:
            nonlocal watcher
            if watcher is not None:
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        try:
            await self.app(scope, wrapped, send)
        finally:
            if watcher is not None:
                watcher.cancel()


async def await_result(future: Future, deadline: float | None,
                       disconnected: asyncio.Event | None = None) -> Any:
    """The future's result once done; DeadlineExceeded past ``deadline`` (monotonic), or
    ClientDisconnected once ``disconnected`` is set. The future is left as it is: the caller
    gives the request up."""
    waiting = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(disconnected.wait()) if disconnected is not None else None
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait({waiting} if gone is None else {waiting, gone},
                                     timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiting in done:
            return waiting.result()
        if gone is not None and gone in done:
            raise ClientDisconnected
        raise DeadlineExceeded
    finally:
        if gone is not None:
            gone.cancel()
        # an outcome nobody awaits any more is not an error to log
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
