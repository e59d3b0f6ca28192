"""A client's request as it arrives: its body read within limits, and the
work done for it cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import BodyTimeout, ClientClosed, PayloadTooLarge

log = logging.getLogger("ctxwarden")


@dataclass(frozen=True)
class Incoming:
    """The parts of a client request the upstream call needs; `path` is the
    checked path with the client's percent-escapes (routing.check_path)."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> str:
        value = first_value(self.headers, name)
        return "" if value is None else value.decode("latin-1")


def first_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of the field `name` (lower case) in raw headers. One
    pass, no decoding: httpx.Headers.get decodes every field and joins
    repeated ones, four times the cost for the few fields a request reads."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


# A request answered sooner than this never has its disconnect watched: an
# upstream call that short costs little to finish for a client that left.
# Its watch is a timer cancelled unfired rather than a task started and
# cancelled, about 4 µs less CPU a request (python bench/cancel_scopes.py).
WATCH_AFTER_SECONDS = 0.02


class ClientWatch:
    """Tells when the client has gone away, from WATCH_AFTER_SECONDS after the
    end of its request body to the end of its response: one task per request,
    whichever scope it is to cancel at the time (the work's, then a
    stream's). A bare task cancelling an anyio scope, not a task group: the
    group and its task cost several times the rest of a small request's way
    through here (bench/cancel_scopes.py). What it cancels still runs in an
    anyio scope, so the shielded clean-ups in it behave as in a task group."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._on_gone: Callable[[], None] | None = None
        self.gone = False

    def start(self) -> None:
        """Call once the request body has been read whole: from then on the
        server's `receive` only reports the disconnect."""
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, self._begin)

    def _begin(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def on_gone(self, callback: Callable[[], None] | None) -> None:
        """What to do when the client goes away (at once, if it has)."""
        self._on_gone = callback
        if callback is not None and self.gone:
            callback()

    @property
    def watching(self) -> bool:
        return self._timer is not None or self._task is not None

    def close(self) -> None:
        # Let go of the task: its CancelledError's traceback holds the task's
        # frame, which holds this watch. Kept, that cycle would be left to the
        # garbage collector, eleven objects a request.
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._on_gone is not None:
            self._on_gone()


async def until_disconnected(watch: ClientWatch, work: Callable[[], Awaitable],
                             keep_going: Callable[[], bool] = lambda: False):
    """`work()`'s result, or ClientClosed when the client disconnected first:
    the work (and the upstream call in it) is then cancelled, unless
    `keep_going()` says someone else waits for it."""
    scope = anyio.CancelScope()

    def gone() -> None:
        if keep_going():
            log.info("client went away; its answer is still fetched for a coalesced follower")
        else:
            scope.cancel()

    watch.on_gone(gone)
    try:
        with scope:
            return await work()
    finally:
        watch.on_gone(None)
    raise ClientClosed("the client closed the connection before its answer was ready")


async def respond(response: Response, scope: Scope, receive: Receive, send: Send, watch: ClientWatch) -> None:
    """Send `response`; a stream stops when the client goes away (`watch`;
    a request refused before its body was read has none started, and
    Starlette's StreamingResponse watches with a task group of its own)."""
    if not isinstance(response, StreamingResponse) or response.background is not None or not watch.watching:
        await response(scope, receive, send)
        return
    stream = anyio.CancelScope()
    watch.on_gone(stream.cancel)
    try:
        with stream:
            await response.stream_response(send)
    finally:
        watch.on_gone(None)


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return int(declared)


async def _received(receive: Receive, limit: int) -> bytes:
    """The body's messages joined, read as Request.stream() reads them but
    without its two async generators on the way of every request."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body: at most `limit` bytes (413), arrived within `timeout`
    seconds (408); a client gone mid-upload is ClientClosed (499). The body
    is read from the request's receive, which nothing has read before."""
    _declared_length(request, limit)
    try:
        # asyncio's timeout rather than anyio.fail_after: a third of the cost,
        # and nothing here runs in an anyio scope of its own
        async with asyncio.timeout(timeout):
            return await _received(request.receive, limit)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise ClientClosed("the client closed the connection while sending its body") from None
