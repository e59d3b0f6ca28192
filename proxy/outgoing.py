"""A request on its way upstream: the slot it holds of the gate, and the timed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import httpx

from .errors import NoSlot
from .incoming import Incoming
from .observability.record import RequestRecord
from .parallel.gate import UpstreamGate
from .retrying import call_with_retries
from .routing import Target
from .upstream import UpstreamClient


class Slot:
    """A request's interactive slot of the upstream gate: waited for at most
    `timeout` right before the upstream call, released once the response has
    been sent (stream included)."""

    def __init__(self, gate: UpstreamGate):
        self.gate = gate
        self.held = False

    async def take(self, timeout: float) -> None:
        if self.gate.try_acquire("interactive"):
            self.held = True   # a free slot: no timer to arm and cancel
            return
        try:
            # asyncio's timeout, a third of anyio.fail_after's cost (bench/cancel_scopes.py);
            # a client gone meanwhile still cancels the wait through the gateway's anyio scope
            async with asyncio.timeout(timeout):
                await self.gate.acquire("interactive")
        except TimeoutError:
            raise NoSlot(f"all {self.gate.pool_size} upstream connection slots stayed busy for "
                         f"{timeout:g} s; retry shortly") from None
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.release("interactive")


async def send(client: UpstreamClient, record: RequestRecord, target: Target, request: Incoming,
               content: bytes | None, slot: Slot | None, slot_timeout: float,
               fallbacks: tuple[Target, ...] = ()) -> httpx.Response:
    """The upstream's answer (headers read, body not yet), once the request
    holds its slot, retried and handed to `fallbacks` as their configs say
    (retrying.py), all under that one slot; the record learns where it went
    and how long it took, retries and their waits included."""
    if slot is not None:
        await slot.take(slot_timeout)
    started = time.perf_counter()
    record.overhead_seconds = started - record.started

    def call(chosen: Target) -> Awaitable[httpx.Response]:
        return client.send(chosen, request.method, request.path, request.query, request.headers, content)

    try:
        return await call_with_retries((target, *fallbacks), call, record)
    finally:
        record.upstream_seconds = time.perf_counter() - started
