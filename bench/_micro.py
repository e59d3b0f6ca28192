"""What the micro-benchmarks share: the load average line, CPU time per call
(the best of a few runs, so other work on the machine counts least), and the
event loop `ctxwarden serve` runs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def per_call_us(call: Callable[[], Any], n: int, repeat: int = 3) -> float:
    """CPU µs per call of ``call``, the best of ``repeat`` runs of ``n`` calls."""
    call()
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


async def per_await_us(call: Callable[[], Awaitable[Any]], n: int, repeat: int = 3) -> float:
    """CPU µs per awaited call, the best of ``repeat`` runs of ``n``; tasks the
    calls leave behind (cancelled ones) end inside the measurement."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(n):
            await call()
        await asyncio.sleep(0)
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``main()`` on uvloop, as `ctxwarden serve` runs, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main())
    return uvloop.run(main())
