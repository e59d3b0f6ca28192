"""The process-wide upstream concurrency gate.

One gate guards the upstream connection pool (``pool_size`` slots, meant to
match the shared httpx client's ``max_connections``). Two kinds of caller take
slots from it:

* interactive requests (a client's own chat call) may use all ``pool_size``
  slots: ``await gate.acquire("interactive")`` right before the upstream call,
  ``gate.release("interactive")`` once the response has been sent;
* parallel fan-out (tasks of ``POST /_ctxwarden/parallel`` and
  ``ctxwarden run-parallel``), ``async with gate.fanout():``, may hold at most
  ``fanout_limit = max(1, floor(pool_size * resource_limit))`` slots at once,
  counted over every parallel run in the process. The other
  ``pool_size - fanout_limit`` slots are therefore always left to interactive
  traffic, however large the fan-out.

Waiting is first come, first served across both kinds, except that a fan-out
waiter whose share is used up never holds back an interactive waiter queued
behind it (no head-of-line blocking). Slots are handed over directly to the
next waiter on release, so a caller arriving later cannot overtake the queue.
A waiter cancelled while it waits (client gone, task timeout) never leaks a
slot: if the slot was already handed to it, it is passed on at once. (Hand-built
futures rather than a semaphore, because no library primitive both shares a
pool between two kinds and keeps one queue order across them.)

With ``resource_limit = 1`` (or ``pool_size = 1``) fan-out may use the whole
pool; that is the configuration's choice, not a gate guarantee.

The gate is asyncio-only (the proxy runs under uvicorn's asyncio loop) and
must be used from a single event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["interactive", "fanout"]


@dataclass(frozen=True)
class _Waiter:
    seq: int
    fut: asyncio.Future[None]


class UpstreamGate:
    """Bounds concurrent upstream calls; fan-out gets at most its share of the pool."""

    def __init__(self, pool_size: int, resource_limit: float) -> None:
        self._in_use = 0
        self._fanout_in_use = 0
        self._seq = 0
        self._interactive_q: deque[_Waiter] = deque()
        self._fanout_q: deque[_Waiter] = deque()
        self._waiting_interactive = 0
        self._waiting_fanout = 0
        self._set_limits(pool_size, resource_limit)

    def _set_limits(self, pool_size: int, resource_limit: float) -> None:
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be an integer >= 1, not {pool_size!r}")
        if not (0 < resource_limit <= 1):
            raise ValueError(f"resource_limit must be in (0, 1], not {resource_limit!r}")
        self.pool_size = pool_size
        # a tiny epsilon so that e.g. 10 * 0.7 = 6.999999 still gives 7
        self.fanout_limit = max(1, min(pool_size, math.floor(pool_size * resource_limit + 1e-9)))

    def reconfigure(self, pool_size: int, resource_limit: float) -> None:
        """Change the limits (config reload). Slots already held stay held; a
        smaller pool only takes effect as they are released."""
        self._set_limits(pool_size, resource_limit)
        self._wake()

    async def acquire(self, kind: Kind) -> None:
        """Take a slot; pair with :meth:`release`."""
        await self._acquire(_is_fanout(kind))

    def try_acquire(self, kind: Kind) -> bool:
        """Take a slot if one is free now without waiting; True when taken."""
        return self._try_take(_is_fanout(kind))

    def release(self, kind: Kind) -> None:
        self._release(_is_fanout(kind))

    @contextlib.asynccontextmanager
    async def fanout(self) -> AsyncIterator[None]:
        """``async with gate.fanout():`` one slot out of the fan-out share."""
        await self._acquire(True)
        try:
            yield
        finally:
            self._release(True)

    def snapshot(self) -> dict[str, int]:
        """Every counter at once, e.g. for a metrics collector."""
        return {
            "pool_size": self.pool_size,
            "fanout_limit": self.fanout_limit,
            "in_use": self._in_use,
            "fanout_in_use": self._fanout_in_use,
            "interactive_in_use": self._in_use - self._fanout_in_use,
            "waiting": self._waiting_interactive + self._waiting_fanout,
            "waiting_interactive": self._waiting_interactive,
            "waiting_fanout": self._waiting_fanout,
        }

    def _can_take(self, fanout: bool) -> bool:
        if self._in_use >= self.pool_size:
            return False
        return not fanout or self._fanout_in_use < self.fanout_limit

    def _take(self, fanout: bool) -> None:
        self._in_use += 1
        if fanout:
            self._fanout_in_use += 1

    def _try_take(self, fanout: bool) -> bool:
        # Nobody of this kind queued and room now. (Invariant: after every
        # change _wake() has granted whatever it could, so a queued waiter of
        # the other kind cannot be granted either; for interactive that means
        # the pool is full, for fan-out that its share is full.)
        queued = self._waiting_fanout if fanout else self._waiting_interactive
        if queued == 0 and self._can_take(fanout):
            self._take(fanout)
            return True
        return False

    async def _acquire(self, fanout: bool) -> None:
        if self._try_take(fanout):
            return

        self._seq += 1
        waiter = _Waiter(self._seq, asyncio.get_running_loop().create_future())
        if fanout:
            self._fanout_q.append(waiter)
            self._waiting_fanout += 1
        else:
            self._interactive_q.append(waiter)
            self._waiting_interactive += 1
        try:
            await waiter.fut
        except BaseException:
            if waiter.fut.cancelled() or not waiter.fut.done():
                # Never granted: it stays in its queue as a cancelled entry that
                # _wake() discards; only the count changes now.
                waiter.fut.cancel()
                if fanout:
                    self._waiting_fanout -= 1
                else:
                    self._waiting_interactive -= 1
            else:
                # Granted, but we were cancelled before we could run: pass it on.
                self._release(fanout)
            raise

    def _release(self, fanout: bool) -> None:
        self._in_use -= 1
        if fanout:
            self._fanout_in_use -= 1
        if self._in_use < 0 or self._fanout_in_use < 0:  # pragma: no cover - misuse
            self._in_use = max(self._in_use, 0)
            self._fanout_in_use = max(self._fanout_in_use, 0)
            raise RuntimeError("UpstreamGate released more slots than were acquired")
        self._wake()

    @staticmethod
    def _head(q: deque[_Waiter]) -> _Waiter | None:
        while q and q[0].fut.done():  # cancelled while waiting
            q.popleft()
        return q[0] if q else None

    def _wake(self) -> None:
        """Hand free slots to waiters, oldest first among those that may take one."""
        iq, fq = self._interactive_q, self._fanout_q
        while self._in_use < self.pool_size:
            i = self._head(iq)
            f = self._head(fq) if self._fanout_in_use < self.fanout_limit else None
            if i is None and f is None:
                return
            if f is None or (i is not None and i.seq < f.seq):
                self._grant(iq, False)
            else:
                self._grant(fq, True)

    def _grant(self, q: deque[_Waiter], fanout: bool) -> None:
        waiter = q.popleft()
        if fanout:
            self._waiting_fanout -= 1
        else:
            self._waiting_interactive -= 1
        self._take(fanout)
        waiter.fut.set_result(None)


def _is_fanout(kind: str) -> bool:
    if kind == "fanout":
        return True
    if kind == "interactive":
        return False
    raise ValueError(f"kind must be 'interactive' or 'fanout', not {kind!r}")
