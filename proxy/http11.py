"""One HTTP/1.1 connection to an upstream, as an asyncio protocol.

The request goes out in one write; what the socket does not take at once
waits in the transport's buffer, and the caller waits for that to drain
within the write timeout. The answer is parsed as it arrives by
httptools (llhttp, the parser under Node.js and uvicorn). Its body is handed
over in the pieces that arrived, all of them at once when the reader was not
waiting, so a small answer is one piece and a stream's events are never held
back. Reading pauses while more than `PAUSE_BYTES` wait unread.

Errors are httpx's exception types: the transport above hands this
connection's answers out as httpx responses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools
import httpx

# Unread answer bytes past which the socket is no longer read (a client slower
# than its upstream must not make the proxy hold a whole stream in memory).
PAUSE_BYTES = 256 * 1024

# A body past this size is written after its head rather than copied onto it.
JOIN_LIMIT = 65536

# Request bytes the socket has not taken past which the write timeout runs
# (the transport pauses writing above it and resumes once the buffer is empty).
WRITE_BUFFER_BYTES = 65536

# What a connection closed before any byte of an answer is reported as; the
# words httpx (h11) uses, which the upstream client's one retry looks for.
CLOSED_BEFORE_ANSWERING = "Server disconnected without sending a response."


class Connection(asyncio.Protocol):
    """A keep-alive connection, one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.on_lost: Callable[[Connection], None] | None = None
        self._writing_paused = False   # the transport's: more than WRITE_BUFFER_BYTES unsent
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._has_head = False
        self._informational = False
        self._head_only = False
        self._complete = False
        self._keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._unread = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._answering = False

    # ------------------------------------------------------------ the caller's side

    def send_request(self, head: bytes, content: bytes | None, head_only: bool) -> None:
        """Write a request (its head already framed) and expect its answer.
        `head_only`: the answer ends with its head (HEAD, a CONNECT tunnel)."""
        assert self.transport is not None
        self._reset()
        self._answering, self._head_only = True, head_only
        if content and len(content) > JOIN_LIMIT:
            self.transport.write(head)
            self.transport.write(content)
        else:
            self.transport.write(head + content if content else head)

    async def request_written(self, timeout: float | None) -> None:
        """Wait while more than WRITE_BUFFER_BYTES of the request wait for the
        socket: httpx.WriteTimeout, the connection closed, when `timeout`
        seconds pass without the socket taking any of it (an upstream that
        stopped reading), as httpx times each write. Returns at once when the
        socket took it, as it takes any small request, and when the answer
        begins first (an upstream may answer, a 413 say, before reading the
        whole request)."""
        while self._writing_paused and not self._has_head:
            if self._error is not None:
                raise self._error
            unsent = self.transport.get_write_buffer_size()
            if not await self._wait(timeout, fail=False) and self.transport.get_write_buffer_size() >= unsent:
                self.close()
                raise httpx.WriteTimeout("the upstream took none of the request within the write timeout")

    async def response_head(self, timeout: float | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        while not self._has_head:
            if self._error is not None:
                raise self._error
            await self._wait(timeout)
        return self._status, self._reason, self._headers

    async def receive(self, timeout: float | None) -> bytes | None:
        """The answer's next bytes, everything that arrived since the last
        call; None once the answer is complete."""
        while True:
            if self._chunks:
                data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._unread = 0
                if self._paused and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait(timeout)

    def upgraded(self, transport: asyncio.Transport) -> None:
        """Carry on over `transport` (TLS started inside a CONNECT tunnel)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES, low=0)
        self._parser = httptools.HttpResponseParser(self)

    @property
    def reusable(self) -> bool:
        """The answer was read to its end and the connection may carry another
        (not when the answer came before the request had all been sent: the
        rest would be read as the next request)."""
        return (self._complete and not self._chunks and self._keep_alive and not self.closed
                and not self.transport.get_write_buffer_size())

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    async def _wait(self, timeout: float | None, fail: bool = True) -> bool:
        """Until the protocol wakes the caller (True). After `timeout` seconds:
        httpx.ReadTimeout, the connection closed; with `fail` False, False."""
        waiter = self._waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, self._timed_out, waiter, fail)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[bool], fail: bool) -> None:
        if waiter.done():
            return
        if not fail:
            waiter.set_result(False)
            return
        waiter.set_exception(httpx.ReadTimeout("the upstream sent nothing within the read timeout"))
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, error: Exception) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    # ------------------------------------------------------------ asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES, low=0)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close; connection_lost says what the answer became

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answering and not self._complete:
            if exc is None and self._has_head and self._ends_with_close():
                self._complete = True
                self._wake()
            elif not self._has_head and not self._chunks:
                self._fail(httpx.RemoteProtocolError(CLOSED_BEFORE_ANSWERING))
            else:
                self._fail(httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"))
        if self.on_lost is not None:
            self.on_lost(self)

    def _ends_with_close(self) -> bool:
        # a body framed by neither a length nor chunks ends with the connection
        # (asked only when it closes: nothing to look up on every answer)
        return self._status not in (204, 304) and not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers)

    # ------------------------------------------------------------ httptools' callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101 and not self._head_only:
            # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._informational, self._reason, self._headers = True, b"", []
            return
        self._status, self._has_head = status, True
        if self._head_only:
            # the parser does not know the request: it would wait for a body that never comes
            self._complete, self._keep_alive, self._answering = True, False, False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._unread += len(body)
        if self._unread > PAUSE_BYTES and not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:
            return
        self._complete, self._keep_alive, self._answering = True, self._parser.should_keep_alive(), False
        self._wake()
