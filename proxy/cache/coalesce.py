"""In-flight coalescing: identical requests in flight at once make one upstream call.

Usage (one event loop; no locks needed because ``join`` does not await)::

    inflight = InFlight()

    entry = inflight.join(key)
    if entry.leader:                       # a Broadcast: we make the upstream call
        try:
            entry.start(status, headers)
            async for chunk in upstream_body:
                entry.publish(chunk)
                ...relay chunk to our own client...
        except BaseException as exc:       # upstream failure, or our client went away
            entry.fail(exc if isinstance(exc, Exception) else ClientGone(...))
            raise
        entry.finish()
    else:                                  # a Subscriber: replay what the leader gets
        status, headers = await entry.head()
        async for chunk in entry:          # every chunk from the first, in order
            ...

(In the proxy, :class:`ctxwarden.caching.CacheTap` drives the broadcast as it
relays, and :class:`ctxwarden.caching.OpenTap` makes sure every broadcast it
opened is finished or failed, whatever happens to the request.)

Semantics

* The first ``join(key)`` while nothing runs under ``key`` gets a
  :class:`Broadcast` (``leader`` is True). Every later ``join(key)`` until that
  broadcast finishes or fails gets a :class:`Subscriber` of it: it yields the
  status and headers, then every published chunk *from the beginning* in order,
  as they arrive, so a follower that joins mid-stream still sees the whole body
  (streaming followers get the same events).
* Whatever the leader publishes is what followers get, error statuses included
  (an upstream 429 or 500 relayed by the leader reaches followers as is).
* ``finish()`` ends the answer: followers' iteration stops after the last chunk.
* ``fail(exc)``: followers raise ``exc`` (the same exception object) from
  ``head()`` (if the leader never started) or from iteration, after the chunks
  published before the failure. ``finish`` and ``fail`` on a closed broadcast
  do nothing, so the first one wins.
* The broadcast's owner must finish or fail it whatever happens: followers wait
  until it does. A leader whose client goes away is failed by its owner with an
  error of its own (the proxy's ``CLIENT_GONE``), not with the cancellation.
  There is no hand-over of a running upstream call: a follower that has sent
  nothing to its own client yet may simply ``join`` again and becomes (or
  follows) a new leader; one that has already relayed bytes must end its
  response as a leader's client would.
* Finishing or failing releases the key at once, so the next request tries again
  (a finished answer is served by the response cache from then on, not from
  here). Followers already attached keep draining the finished broadcast.
* Memory is bounded by ``max_buffer`` (``InFlight(max_buffer=...)``, default
  :data:`MAX_BUFFER_BYTES`, the response cache's size limit). Below it a
  broadcast keeps every chunk, so a follower joining late still gets the whole
  answer. Once more than ``max_buffer`` bytes have been published the broadcast
  *overflows*: it leaves the registry at once (later identical requests make
  their own upstream call: an answer that large is not shared with newcomers),
  and from then on it keeps only the chunks some attached follower has not
  read yet, at most ``max_buffer`` bytes: a follower that falls further behind
  than that gets :class:`FollowerTooSlow` (after the chunks it had already
  read) and is dropped, so one slow reader can never make the proxy hold a
  huge answer whole. After the broadcast finished or failed, chunks every
  attached follower has read are dropped as they go.

The key is the caller's to choose; the response cache key is the natural one
(the proxy may add the requested form, JSON vs SSE, so that followers never need
to convert, or convert with :mod:`ctxwarden.cache.sse`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, AsyncIterator, Generic, TypeVar

from ctxwarden.cache.entry import MAX_ANSWER_BYTES

__all__ = ["MAX_BUFFER_BYTES", "Broadcast", "FollowerTooSlow", "InFlight", "Subscriber"]

H = TypeVar("H")

#: Default for how many published bytes a broadcast keeps for its followers:
#: the response cache's size limit (answers above it are not stored either).
MAX_BUFFER_BYTES = MAX_ANSWER_BYTES


class FollowerTooSlow(Exception):
    """A follower fell more than ``max_buffer`` bytes behind an overflowing leader."""


class _Cursor:
    """A follower's read position, as its broadcast sees it."""

    __slots__ = ("error", "live", "pos")

    def __init__(self) -> None:
        self.pos = 0            # the number of the next chunk to read
        self.live = True        # counted in the broadcast's positions
        self.error: BaseException | None = None


class Broadcast(Generic[H]):
    """The leader's side: publish status, headers and body chunks to followers."""

    leader = True

    def __init__(self, key: str, registry: "InFlight | None" = None, *,
                 max_buffer: int | None = MAX_BUFFER_BYTES) -> None:
        self.key = key
        self._registry = registry
        self.status: int | None = None
        self.headers: H | None = None
        #: chunk number ``i`` is ``_list[i - _offset]``; those below ``base`` are gone
        self._list: list[bytes | None] = []
        self._offset = 0
        self.base = 0
        #: bytes published in all / bytes kept now
        self.size = 0
        self.held = 0
        self.max_buffer = max_buffer
        #: more than ``max_buffer`` bytes were published: see the module doc
        self.overflowed = False
        self.done = False
        self.error: BaseException | None = None
        self.followers = 0
        self._at: dict[int, int] = {}       # position -> live followers there
        self._cursors: set[_Cursor] = set()  # live followers
        self._changed = asyncio.Event()

    @property
    def chunks(self) -> list[bytes]:
        """The chunks kept now (all of them until the broadcast overflows or closes)."""
        return self._list[self.base - self._offset:]  # type: ignore[return-value]

    @property
    def _end(self) -> int:
        return self._offset + len(self._list)

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
            self._list.append(bytes(chunk))
            self.size += len(chunk)
            self.held += len(chunk)
            if not self.overflowed and self.max_buffer is not None and self.size > self.max_buffer:
                self.overflowed = True
                self._release()  # newcomers could no longer get the whole answer
            self._trim()
            self._wake()

    def finish(self) -> None:
        if self.closed:
            return
        if self.status is None:
            raise RuntimeError("finish before start")
        self.done = True
        self._release()
        self._trim()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.error = exc
        self._release()
        self._trim()
        self._wake()

    # -- bookkeeping of what followers have read

    def _trim(self) -> None:
        """Once no new follower can join (overflowed or closed): drop the chunks
        every live follower has read, then drop followers more than
        ``max_buffer`` bytes behind. Amortised O(1) per chunk read."""
        if not (self.overflowed or self.closed):
            return
        while True:
            low, end, at = self.base, self._end, self._at
            while low < end and not at.get(low):
                index = low - self._offset
                self.held -= len(self._list[index] or b"")
                self._list[index] = None
                low += 1
            self.base = low
            dead = low - self._offset
            if dead and dead * 2 >= len(self._list):
                del self._list[:dead]
                self._offset = low
            if not (self.overflowed and self.max_buffer is not None and self.held > self.max_buffer):
                return
            slowest = [c for c in self._cursors if c.pos == low]
            if not slowest:  # pragma: no cover - a follower is always at base when held > 0
                return
            for cursor in slowest:
                cursor.error = FollowerTooSlow(
                    f"follower of {self.key[:16]} fell more than {self.max_buffer} bytes behind")
                self._uncount(cursor)
            self._wake()

    def _uncount(self, cursor: _Cursor) -> None:
        if cursor.live:
            cursor.live = False
            self._cursors.discard(cursor)
            left = self._at[cursor.pos] - 1
            if left:
                self._at[cursor.pos] = left
            else:
                del self._at[cursor.pos]

    def _forget(self, cursor: _Cursor) -> None:
        """The follower stopped reading (finished, failed, went away, or was collected)."""
        if cursor.live:
            self._uncount(cursor)
            self._trim()

    def _step(self, cursor: _Cursor) -> None:
        old = cursor.pos
        cursor.pos = old + 1
        if cursor.live:
            left = self._at[old] - 1
            if left:
                self._at[old] = left
            else:
                del self._at[old]
            self._at[old + 1] = self._at.get(old + 1, 0) + 1
            if old == self.base:
                self._trim()  # it was among the slowest: what it read may go

    def subscribe(self) -> "Subscriber[H]":
        if self.base:
            raise RuntimeError("broadcast no longer holds its beginning")
        self.followers += 1
        subscriber: Subscriber[H] = Subscriber(self)
        cursor = subscriber._cursor
        self._cursors.add(cursor)
        self._at[0] = self._at.get(0, 0) + 1
        # a follower dropped without reading to the end must not pin chunks
        weakref.finalize(subscriber, self._forget, cursor)
        return subscriber


class Subscriber(Generic[H]):
    """A follower's side: the leader's status, headers and chunks, replayed from the start.

    Iterate it once (``async for``): it keeps its read position,
    which is what lets the broadcast drop what every follower has read."""

    leader = False

    def __init__(self, broadcast: Broadcast[H]) -> None:
        self._b = broadcast
        self._cursor = _Cursor()

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
        b, cursor = self._b, self._cursor
        try:
            await self.head()
            while True:
                while cursor.error is None and cursor.pos < b._end:
                    if cursor.pos < b.base:
                        raise RuntimeError("a follower may iterate its answer only once")
                    chunk = b._list[cursor.pos - b._offset]
                    b._step(cursor)
                    yield chunk  # type: ignore[misc]
                if cursor.error is not None:
                    raise cursor.error
                if b.error is not None:
                    raise b.error
                if b.done:
                    return
                await b._changed.wait()
        finally:
            b._forget(cursor)


class InFlight:
    """Registry of running leaders by key."""

    def __init__(self, *, max_buffer: int | None = MAX_BUFFER_BYTES) -> None:
        self.max_buffer = max_buffer
        self._running: dict[str, Broadcast[Any]] = {}
        #: how many join() calls became followers (upstream calls saved)
        self.coalesced = 0

    def join(self, key: str) -> "Broadcast[Any] | Subscriber[Any]":
        """Become the leader for ``key`` (a Broadcast) or follow the running one (a Subscriber)."""
        running = self._running.get(key)
        if running is not None and not running.closed:
            self.coalesced += 1
            return running.subscribe()
        broadcast: Broadcast[Any] = Broadcast(key, self, max_buffer=self.max_buffer)
        self._running[key] = broadcast
        return broadcast

    def _release(self, broadcast: Broadcast[Any]) -> None:
        if self._running.get(broadcast.key) is broadcast:
            del self._running[broadcast.key]
