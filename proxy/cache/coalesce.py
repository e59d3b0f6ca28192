"""In-flight coalescing: identical requests in flight at once make one upstream call.

Usage (one event loop; no locks needed because ``join`` does not await)::

    inflight = InFlight()

    entry = inflight.join(key)
    if entry.leader:                       # a Broadcast: we make the upstream call
        async with entry:                  # failure / cancellation -> followers see it
            entry.start(status, headers)
            async for chunk in upstream_body:
                entry.publish(chunk)
                ...relay chunk to our own client...
            entry.finish()
    else:                                  # a Subscriber: replay what the leader gets
        status, headers = await entry.head()
        async for chunk in entry:          # every chunk from the first, in order
            ...
        # or: body = await entry.body()

Semantics

* The first ``join(key)`` while nothing runs under ``key`` gets a
  :class:`Broadcast` (``leader`` is True). Every later ``join(key)`` until that
  broadcast finishes or fails gets a :class:`Subscriber` of it: it yields the
  status and headers, then every published chunk *from the beginning* in order,
  as they arrive, so a follower that joins mid-stream still sees the whole body
  (streaming followers get the same events).
* Whatever the leader publishes is what followers get, error statuses included
  (an upstream 429 or 500 relayed by the leader reaches followers as is).
* ``fail(exc)``: followers raise ``exc`` (the same exception object) from
  ``head()`` / iteration, after the chunks published before the failure.
* Leaving ``async with entry`` by an exception fails the broadcast with it; by
  cancellation (the leader's client went away) or ``GeneratorExit``, followers
  get :class:`LeaderCancelled`. There is no hand-over of a running upstream
  call: a follower that has sent nothing to its own client yet may simply
  ``join`` again and becomes (or follows) a new leader; one that has already
  relayed bytes must end its response as a leader's client would. Leaving the
  block normally without ``finish()`` fails followers with ``RuntimeError``.
* Finishing or failing releases the key at once, so the next request tries again
  (a finished answer is served by the response cache from then on, not from
  here). Followers already attached keep draining the finished broadcast.
* Memory: a broadcast keeps every chunk until its last subscriber is gone; it is
  bounded by the answer size, like the stream recorder.

The key is the caller's to choose; the response cache key is the natural one
(the proxy may add the requested form, JSON vs SSE, so that followers never need
to convert, or convert with :mod:`proxy.cache.sse`).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, AsyncIterator, Generic, TypeVar

__all__ = ["Broadcast", "InFlight", "LeaderCancelled", "Subscriber"]

H = TypeVar("H")


class LeaderCancelled(Exception):
    """The leader of a coalesced request went away before it finished."""


class Broadcast(Generic[H]):
    """The leader's side: publish status, headers and body chunks to followers."""

    leader = True

    def __init__(self, key: str, registry: "InFlight | None" = None) -> None:
        self.key = key
        self._registry = registry
        self.status: int | None = None
        self.headers: H | None = None
        self.chunks: list[bytes] = []
        self.done = False
        self.error: BaseException | None = None
        self.followers = 0
        self._changed = asyncio.Event()

    # -- leader API

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _release(self) -> None:
        if self._registry is not None:
            self._registry._release(self)

    @property
    def closed(self) -> bool:
        return self.done or self.error is not None

    def start(self, status: int, headers: H) -> None:
        if self.closed:
            raise RuntimeError("broadcast already closed")
        if self.status is not None:
            raise RuntimeError("broadcast already started")
        self.status = status
        self.headers = headers
        self._wake()

    def publish(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("broadcast already closed")
        if self.status is None:
            raise RuntimeError("publish before start")
        if chunk:
            self.chunks.append(bytes(chunk))
            self._wake()

    def finish(self) -> None:
        if self.closed:
            return
        if self.status is None:
            raise RuntimeError("finish before start")
        self.done = True
        self._release()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.error = exc
        self._release()
        self._wake()

    async def __aenter__(self) -> "Broadcast[H]":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        if exc is None:
            self.fail(RuntimeError("coalesced leader ended without finishing"))
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)):
            self.fail(LeaderCancelled(f"coalesced leader for {self.key[:16]} went away"))
        else:
            self.fail(exc)

    def subscribe(self) -> "Subscriber[H]":
        self.followers += 1
        return Subscriber(self)


class Subscriber(Generic[H]):
    """A follower's side: the leader's status, headers and chunks, replayed from the start."""

    leader = False

    def __init__(self, broadcast: Broadcast[H]) -> None:
        self._b = broadcast

    @property
    def key(self) -> str:
        return self._b.key

    async def head(self) -> tuple[int, H]:
        """Wait for the leader's status and headers (raises the leader's error)."""
        b = self._b
        while b.status is None:
            if b.error is not None:
                raise b.error
            await b._changed.wait()
        return b.status, b.headers  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        b = self._b
        await self.head()
        position = 0
        while True:
            while position < len(b.chunks):
                chunk = b.chunks[position]
                position += 1
                yield chunk
            if b.error is not None:
                raise b.error
            if b.done:
                return
            await b._changed.wait()

    async def body(self) -> bytes:
        """The whole body once the leader finished (raises the leader's error)."""
        return b"".join([chunk async for chunk in self])


class InFlight:
    """Registry of running leaders by key."""

    def __init__(self) -> None:
        self._running: dict[str, Broadcast[Any]] = {}
        #: how many join() calls became followers (upstream calls saved)
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def join(self, key: str) -> "Broadcast[Any] | Subscriber[Any]":
        """Become the leader for ``key`` (a Broadcast) or follow the running one (a Subscriber)."""
        running = self._running.get(key)
        if running is not None and not running.closed:
            self.coalesced += 1
            return running.subscribe()
        broadcast: Broadcast[Any] = Broadcast(key, self)
        self._running[key] = broadcast
        return broadcast

    def _release(self, broadcast: Broadcast[Any]) -> None:
        if self._running.get(broadcast.key) is broadcast:
            del self._running[broadcast.key]
