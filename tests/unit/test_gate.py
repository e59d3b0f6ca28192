"""The process-wide upstream concurrency gate (proxy/parallel/gate.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from ctxwarden.parallel.gate import UpstreamGate


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def count(gate: UpstreamGate, name: str) -> int:
    return gate.snapshot()[name]


@contextlib.asynccontextmanager
async def interactive(gate: UpstreamGate) -> AsyncIterator[None]:
    """An interactive slot for the block, taken and given back as the gateway does."""
    await gate.acquire("interactive")
    try:
        yield
    finally:
        gate.release("interactive")


def acquired_at_once(gate: UpstreamGate, kind: str) -> bool:
    """Whether acquire(kind) completes without waiting (one step of the coroutine)."""
    step = gate.acquire(kind)  # type: ignore[arg-type]
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()
    return False


@pytest.mark.parametrize(
    "pool, limit, expected",
    [(10, 0.8, 8), (10, 0.7, 7), (100, 0.8, 80), (3, 0.5, 1), (1, 0.8, 1), (4, 0.01, 1), (5, 1.0, 5), (7, 0.99, 6)],
)
def test_fanout_limit(pool: int, limit: float, expected: int) -> None:
    assert count(UpstreamGate(pool, limit), "fanout_limit") == expected


@pytest.mark.parametrize("pool, limit", [(0, 0.8), (-1, 0.5), (10, 0.0), (10, 1.5), (10, -0.2)])
def test_bad_limits(pool: int, limit: float) -> None:
    with pytest.raises(ValueError):
        UpstreamGate(pool, limit)


async def test_fast_path_counts() -> None:
    gate = UpstreamGate(4, 0.5)
    async with interactive(gate):
        assert (count(gate, "in_use"), count(gate, "fanout_in_use"), count(gate, "interactive_in_use")) == (1, 0, 1)
        async with gate.fanout():
            assert (count(gate, "in_use"), count(gate, "fanout_in_use")) == (2, 1)
    assert gate.snapshot() == {
        "pool_size": 4, "fanout_limit": 2, "in_use": 0, "fanout_in_use": 0,
        "interactive_in_use": 0, "waiting": 0, "waiting_interactive": 0, "waiting_fanout": 0,
    }


async def test_fanout_never_exceeds_share_while_interactive_gets_the_rest() -> None:
    gate = UpstreamGate(10, 0.8)
    max_fanout = 0
    release = asyncio.Event()

    async def fan() -> None:
        nonlocal max_fanout
        async with gate.fanout():
            max_fanout = max(max_fanout, count(gate, "fanout_in_use"))
            await release.wait()

    fans = [asyncio.create_task(fan()) for _ in range(30)]
    await settle()
    assert count(gate, "fanout_in_use") == 8
    assert count(gate, "waiting_fanout") == 22
    # the two remaining slots are interactive's, taken at once
    assert acquired_at_once(gate, "interactive") and acquired_at_once(gate, "interactive")
    assert count(gate, "in_use") == 10
    gate.release("interactive")
    gate.release("interactive")
    release.set()
    await asyncio.gather(*fans)
    assert max_fanout == 8
    assert count(gate, "in_use") == 0 and count(gate, "waiting") == 0


async def test_interactive_may_use_whole_pool_and_fanout_then_waits() -> None:
    gate = UpstreamGate(4, 0.5)
    order: list[str] = []
    for _ in range(4):
        await gate.acquire("interactive")
    assert count(gate, "in_use") == 4

    async def fan() -> None:
        async with gate.fanout():
            order.append("fanout")

    f = asyncio.create_task(fan())
    await settle()
    assert count(gate, "waiting_fanout") == 1 and order == []
    gate.release("interactive")
    await f
    assert order == ["fanout"]
    for _ in range(3):
        gate.release("interactive")
    assert count(gate, "in_use") == 0


async def test_fifo_across_kinds_and_no_head_of_line_blocking() -> None:
    gate = UpstreamGate(2, 0.5)  # fan-out share: 1
    order: list[str] = []
    gates_open: dict[str, asyncio.Event] = {}

    async def use(kind: str, name: str) -> None:
        cm = gate.fanout() if kind == "f" else interactive(gate)
        async with cm:
            order.append(name)
            ev = gates_open.setdefault(name, asyncio.Event())
            await ev.wait()

    a = asyncio.create_task(use("f", "f1"))  # holds the fan-out share
    b = asyncio.create_task(use("i", "i1"))  # holds the other slot
    await settle()
    c = asyncio.create_task(use("f", "f2"))  # queued first: must wait for the share
    d = asyncio.create_task(use("i", "i2"))  # queued second
    await settle()
    assert count(gate, "waiting") == 2
    # the interactive slot frees: i2 gets it although f2 queued earlier, since f2
    # may not take it (fan-out share full)
    gates_open["i1"].set()
    await settle()
    assert order == ["f1", "i1", "i2"]
    gates_open["f1"].set()
    await settle()
    assert order == ["f1", "i1", "i2", "f2"]
    gates_open["i2"].set()
    gates_open["f2"].set()
    await asyncio.gather(a, b, c, d)
    assert count(gate, "in_use") == 0


async def test_fifo_order_within_a_kind() -> None:
    gate = UpstreamGate(1, 1.0)
    order: list[int] = []
    await gate.acquire("interactive")

    async def use(i: int) -> None:
        async with interactive(gate):
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(use(i)))
        await asyncio.sleep(0)  # queue them in this order
    gate.release("interactive")
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_late_arrival_does_not_overtake_the_queue() -> None:
    gate = UpstreamGate(1, 1.0)
    order: list[str] = []
    await gate.acquire("interactive")

    async def use(name: str) -> None:
        async with interactive(gate):
            order.append(name)

    queued = asyncio.create_task(use("queued"))
    await settle()
    gate.release("interactive")  # slot is handed to 'queued' directly
    late = asyncio.create_task(use("late"))
    await asyncio.gather(queued, late)
    assert order == ["queued", "late"]


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = UpstreamGate(2, 0.5)
    await gate.acquire("fanout")
    waiters = [asyncio.create_task(gate.acquire("fanout")) for _ in range(5)]
    await settle()
    assert count(gate, "waiting_fanout") == 5
    for w in waiters[:3]:
        w.cancel()
    await settle()
    assert count(gate, "waiting_fanout") == 2
    gate.release("fanout")
    await settle()
    assert count(gate, "fanout_in_use") == 1 and count(gate, "waiting_fanout") == 1
    gate.release("fanout")
    await settle()
    assert count(gate, "fanout_in_use") == 1 and count(gate, "waiting_fanout") == 0
    gate.release("fanout")
    assert count(gate, "in_use") == 0
    await asyncio.gather(*waiters, return_exceptions=True)
    assert count(gate, "in_use") == 0 and count(gate, "waiting") == 0


async def test_cancelled_after_grant_passes_the_slot_on() -> None:
    """The slot is handed over, then the waiter is cancelled before it resumes."""
    gate = UpstreamGate(1, 1.0)
    await gate.acquire("interactive")
    w1 = asyncio.create_task(gate.acquire("interactive"))
    w2 = asyncio.create_task(gate.acquire("interactive"))
    await settle()
    gate.release("interactive")  # granted to w1 (future resolved) ...
    w1.cancel()  # ... but w1 is cancelled before it runs
    await asyncio.gather(w1, return_exceptions=True)
    assert w1.cancelled()
    await w2  # w2 got the slot w1 gave back
    assert count(gate, "in_use") == 1 and count(gate, "waiting") == 0
    gate.release("interactive")
    assert count(gate, "in_use") == 0


async def test_timeout_while_waiting_does_not_leak() -> None:
    gate = UpstreamGate(3, 0.34)  # share 1
    async with gate.fanout():
        for _ in range(20):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):
                    async with gate.fanout():
                        pass  # pragma: no cover
        assert count(gate, "waiting") == 0
    assert count(gate, "in_use") == 0
    async with gate.fanout():
        assert count(gate, "fanout_in_use") == 1


async def test_exception_inside_block_releases() -> None:
    gate = UpstreamGate(2, 0.5)
    with pytest.raises(RuntimeError):
        async with gate.fanout():
            raise RuntimeError("boom")
    assert count(gate, "in_use") == 0 and count(gate, "fanout_in_use") == 0


async def test_reconfigure_grows_share_and_wakes() -> None:
    gate = UpstreamGate(4, 0.25)  # share 1
    await gate.acquire("fanout")
    w = asyncio.create_task(gate.acquire("fanout"))
    await settle()
    assert count(gate, "waiting_fanout") == 1
    gate.reconfigure(4, 0.5)  # share 2
    await w
    assert count(gate, "fanout_in_use") == 2
    gate.release("fanout")
    gate.release("fanout")


async def test_random_mix_stress_never_over_limits() -> None:
    import random

    rnd = random.Random(7)
    gate = UpstreamGate(6, 0.5)
    max_total = max_fan = 0

    async def worker(i: int) -> None:
        nonlocal max_total, max_fan
        fan = rnd.random() < 0.6
        try:
            async with asyncio.timeout(rnd.choice([0.002, 0.05, 1.0])):
                async with (gate.fanout() if fan else interactive(gate)):
                    max_total = max(max_total, count(gate, "in_use"))
                    max_fan = max(max_fan, count(gate, "fanout_in_use"))
                    assert count(gate, "in_use") <= 6 and count(gate, "fanout_in_use") <= 3
                    await asyncio.sleep(rnd.random() * 0.004)
        except TimeoutError:
            pass

    await asyncio.gather(*(worker(i) for i in range(400)))
    assert count(gate, "in_use") == 0 and count(gate, "fanout_in_use") == 0 and count(gate, "waiting") == 0
    assert max_total == 6 and max_fan == 3


async def test_large_fanout_does_not_delay_interactive() -> None:
    """A fan-out of 100 tasks saturating its share while single requests keep
    their latency: every interactive acquisition is immediate."""
    gate = UpstreamGate(10, 0.8)

    async def task() -> None:
        async with gate.fanout():
            await asyncio.sleep(0.02)

    fan = [asyncio.create_task(task()) for _ in range(100)]
    await settle()
    for _ in range(20):
        assert acquired_at_once(gate, "interactive")
        assert count(gate, "fanout_in_use") <= 8
        await asyncio.sleep(0.005)
        gate.release("interactive")
    await asyncio.gather(*fan)
