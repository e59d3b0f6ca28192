"""The process-wide upstream concurrency gate (proxy/gate.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ctxwarden.gate import UpstreamGate, fanout_limit_for


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    "pool, limit, expected",
    [(10, 0.8, 8), (10, 0.7, 7), (100, 0.8, 80), (3, 0.5, 1), (1, 0.8, 1), (4, 0.01, 1), (5, 1.0, 5), (7, 0.99, 6)],
)
def test_fanout_limit(pool: int, limit: float, expected: int) -> None:
    assert fanout_limit_for(pool, limit) == expected
    assert UpstreamGate(pool, limit).fanout_limit == expected


@pytest.mark.parametrize("pool, limit", [(0, 0.8), (-1, 0.5), (10, 0.0), (10, 1.5), (10, -0.2)])
def test_bad_limits(pool: int, limit: float) -> None:
    with pytest.raises(ValueError):
        UpstreamGate(pool, limit)


async def test_fast_path_counts() -> None:
    gate = UpstreamGate(4, 0.5)
    async with gate.interactive():
        assert (gate.in_use, gate.fanout_in_use, gate.interactive_in_use) == (1, 0, 1)
        async with gate.fanout():
            assert (gate.in_use, gate.fanout_in_use) == (2, 1)
    assert gate.snapshot() == {
        "pool_size": 4, "fanout_limit": 2, "in_use": 0, "fanout_in_use": 0,
        "interactive_in_use": 0, "waiting": 0, "waiting_interactive": 0, "waiting_fanout": 0,
    }
    assert gate.acquired_total == {"interactive": 1, "fanout": 1}


async def test_fanout_never_exceeds_share_while_interactive_gets_the_rest() -> None:
    gate = UpstreamGate(10, 0.8)
    max_fanout = 0
    release = asyncio.Event()

    async def fan() -> None:
        nonlocal max_fanout
        async with gate.fanout():
            max_fanout = max(max_fanout, gate.fanout_in_use)
            await release.wait()

    fans = [asyncio.create_task(fan()) for _ in range(30)]
    await settle()
    assert gate.fanout_in_use == 8
    assert gate.waiting_fanout == 22
    # the two remaining slots are interactive's, taken at once
    t = time.perf_counter()
    async with gate.interactive():
        async with gate.interactive():
            assert gate.in_use == 10
            assert time.perf_counter() - t < 0.01
    release.set()
    await asyncio.gather(*fans)
    assert max_fanout == 8
    assert gate.in_use == 0 and gate.waiting == 0


async def test_interactive_may_use_whole_pool_and_fanout_then_waits() -> None:
    gate = UpstreamGate(4, 0.5)
    order: list[str] = []
    held = [gate.interactive() for _ in range(4)]
    for h in held:
        await h.__aenter__()
    assert gate.in_use == 4

    async def fan() -> None:
        async with gate.fanout():
            order.append("fanout")

    f = asyncio.create_task(fan())
    await settle()
    assert gate.waiting_fanout == 1 and order == []
    await held[0].__aexit__(None, None, None)
    await f
    assert order == ["fanout"]
    for h in held[1:]:
        await h.__aexit__(None, None, None)
    assert gate.in_use == 0


async def test_fifo_across_kinds_and_no_head_of_line_blocking() -> None:
    gate = UpstreamGate(2, 0.5)  # fan-out share: 1
    order: list[str] = []
    gates_open: dict[str, asyncio.Event] = {}

    async def use(kind: str, name: str) -> None:
        cm = gate.fanout() if kind == "f" else gate.interactive()
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
    assert gate.waiting == 2
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
    assert gate.in_use == 0


async def test_fifo_order_within_a_kind() -> None:
    gate = UpstreamGate(1, 1.0)
    order: list[int] = []
    first = gate.interactive()
    await first.__aenter__()

    async def use(i: int) -> None:
        async with gate.interactive():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(use(i)))
        await asyncio.sleep(0)  # queue them in this order
    await first.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_late_arrival_does_not_overtake_the_queue() -> None:
    gate = UpstreamGate(1, 1.0)
    order: list[str] = []
    holder = gate.interactive()
    await holder.__aenter__()

    async def use(name: str) -> None:
        async with gate.interactive():
            order.append(name)

    queued = asyncio.create_task(use("queued"))
    await settle()
    await holder.__aexit__(None, None, None)  # slot is handed to 'queued' directly
    late = asyncio.create_task(use("late"))
    await asyncio.gather(queued, late)
    assert order == ["queued", "late"]


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = UpstreamGate(2, 0.5)
    holder = gate.fanout()
    await holder.__aenter__()
    waiters = [asyncio.create_task(gate.acquire("fanout")) for _ in range(5)]
    await settle()
    assert gate.waiting_fanout == 5
    for w in waiters[:3]:
        w.cancel()
    await settle()
    assert gate.waiting_fanout == 2
    await holder.__aexit__(None, None, None)
    await settle()
    assert gate.fanout_in_use == 1 and gate.waiting_fanout == 1
    gate.release("fanout")
    await settle()
    assert gate.fanout_in_use == 1 and gate.waiting_fanout == 0
    gate.release("fanout")
    assert gate.in_use == 0
    await asyncio.gather(*waiters, return_exceptions=True)
    assert gate.in_use == 0 and gate.waiting == 0


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
    assert gate.in_use == 1 and gate.waiting == 0
    gate.release("interactive")
    assert gate.in_use == 0


async def test_timeout_while_waiting_does_not_leak() -> None:
    gate = UpstreamGate(3, 0.34)  # share 1
    async with gate.fanout():
        for _ in range(20):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):
                    async with gate.fanout():
                        pass  # pragma: no cover
        assert gate.waiting == 0
    assert gate.in_use == 0
    async with gate.fanout():
        assert gate.fanout_in_use == 1


async def test_exception_inside_block_releases() -> None:
    gate = UpstreamGate(2, 0.5)
    with pytest.raises(RuntimeError):
        async with gate.fanout():
            raise RuntimeError("boom")
    assert gate.in_use == 0 and gate.fanout_in_use == 0


async def test_reconfigure_grows_share_and_wakes() -> None:
    gate = UpstreamGate(4, 0.25)  # share 1
    await gate.acquire("fanout")
    w = asyncio.create_task(gate.acquire("fanout"))
    await settle()
    assert gate.waiting_fanout == 1
    gate.reconfigure(4, 0.5)  # share 2
    await w
    assert gate.fanout_in_use == 2
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
                async with (gate.fanout() if fan else gate.interactive()):
                    max_total = max(max_total, gate.in_use)
                    max_fan = max(max_fan, gate.fanout_in_use)
                    assert gate.in_use <= 6 and gate.fanout_in_use <= 3
                    await asyncio.sleep(rnd.random() * 0.004)
        except TimeoutError:
            pass

    await asyncio.gather(*(worker(i) for i in range(400)))
    assert gate.in_use == 0 and gate.fanout_in_use == 0 and gate.waiting == 0
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
    waits = []
    for _ in range(20):
        t = time.perf_counter()
        async with gate.interactive():
            waits.append(time.perf_counter() - t)
            assert gate.fanout_in_use <= 8
            await asyncio.sleep(0.005)
    await asyncio.gather(*fan)
    assert max(waits) < 0.005
    assert gate.waited_total["interactive"] == 0
