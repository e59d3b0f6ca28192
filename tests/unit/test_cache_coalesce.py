"""In-flight coalescing: one upstream call for identical concurrent requests."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from ctxwarden.cache.coalesce import (
    Broadcast,
    FollowerTooSlow,
    InFlight,
    Subscriber,
)

HEADERS = [(b"content-type", b"text/event-stream")]
CHUNKS = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]


class LeaderGone(Exception):
    """What the owner of a broadcast fails it with when the leader's client goes
    away (the proxy's ``CLIENT_GONE``): followers never see a cancellation."""


async def body(follower: Subscriber) -> bytes:
    """A follower's whole body, as the proxy reads it: by iteration."""
    return b"".join([chunk async for chunk in follower])


def assert_released(inflight: InFlight, key: str) -> None:
    """Nothing runs under ``key``: the registry holds nothing for it (a join
    alone cannot tell, as it replaces a closed broadcast anyway) and the next
    join leads. The probe leader is failed at once, which releases the key again."""
    assert key not in inflight._running, f"{key!r} is still held by the registry"
    probe = inflight.join(key)
    assert isinstance(probe, Broadcast), f"{key!r} is still in flight"
    probe.fail(RuntimeError("probe"))


class Upstream:
    """A fake upstream call: counts calls, streams CHUNKS with pauses, can fail."""

    def __init__(self, fail_with: BaseException | None = None, fail_after: int = 1, pause: float = 0.01) -> None:
        self.calls = 0
        self.fail_with = fail_with
        self.fail_after = fail_after
        self.pause = pause
        self.gate = asyncio.Event()
        self.gate.set()

    async def stream(self):
        self.calls += 1
        await self.gate.wait()
        for i, chunk in enumerate(CHUNKS):
            if self.fail_with is not None and i == self.fail_after:
                raise self.fail_with
            await asyncio.sleep(self.pause)
            yield chunk


async def request(inflight: InFlight, key: str, upstream: Upstream, log: list[str] | None = None) -> tuple[int, list, bytes]:
    """What the proxy does for one request: lead and relay, or follow."""
    entry = inflight.join(key)
    if isinstance(entry, Broadcast):
        if log is not None:
            log.append("leader")
        got = []
        try:  # as CacheTap / OpenTap do: every broadcast is finished or failed
            entry.start(200, HEADERS)
            async for chunk in upstream.stream():
                entry.publish(chunk)
                got.append(chunk)
        except BaseException as exc:
            entry.fail(exc if isinstance(exc, Exception) else LeaderGone("the leader's client went away"))
            raise
        entry.finish()
        return 200, HEADERS, b"".join(got)
    assert isinstance(entry, Subscriber)
    if log is not None:
        log.append("follower")
    status, headers = await entry.head()
    return status, headers, await body(entry)


async def test_fifty_concurrent_calls_make_one_upstream_call() -> None:
    inflight, upstream, log = InFlight(), Upstream(), []
    upstream.gate.clear()
    tasks = [asyncio.create_task(request(inflight, "k", upstream, log)) for _ in range(50)]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    results = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert log.count("leader") == 1 and log.count("follower") == 49
    assert inflight.coalesced == 49
    assert all(r == (200, HEADERS, b"".join(CHUNKS)) for r in results)
    assert_released(inflight, "k")  # the only key used: nothing left in flight


async def test_late_follower_gets_everything_from_the_beginning_in_order() -> None:
    inflight, upstream = InFlight(), Upstream(pause=0.02)
    leader = asyncio.create_task(request(inflight, "k", upstream))
    await asyncio.sleep(0.05)  # the leader has published some chunks already
    entry = inflight.join("k")
    assert isinstance(entry, Subscriber)
    seen = []
    async for chunk in entry:
        seen.append(chunk)
    assert seen == CHUNKS
    await leader
    assert upstream.calls == 1


async def test_streaming_follower_receives_chunks_as_they_arrive() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    assert isinstance(leader, Broadcast)
    follower = inflight.join("k")
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in follower:
            received.append(chunk)

    task = asyncio.create_task(consume())
    leader.start(200, HEADERS)
    leader.publish(b"one")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert received == [b"one"]  # before the leader finished
    leader.publish(b"two")
    leader.finish()
    await task
    assert received == [b"one", b"two"]


async def test_leader_failure_propagates_and_next_call_leads_again() -> None:
    inflight = InFlight()
    boom = ConnectionError("upstream reset")
    failing = Upstream(fail_with=boom, fail_after=1)
    failing.gate.clear()
    tasks = [asyncio.create_task(request(inflight, "k", failing)) for _ in range(10)]
    await asyncio.sleep(0.01)
    failing.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert failing.calls == 1
    assert all(r is boom for r in results)
    assert_released(inflight, "k")

    healthy, log = Upstream(), []
    assert await request(inflight, "k", healthy, log) == (200, HEADERS, b"".join(CHUNKS))
    assert log == ["leader"] and healthy.calls == 1


async def test_follower_sees_chunks_published_before_the_failure() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, HEADERS)
    leader.publish(b"first")
    leader.fail(TimeoutError("read timeout"))
    seen = []
    with pytest.raises(TimeoutError):
        async for chunk in follower:
            seen.append(chunk)
    assert seen == [b"first"]


async def test_failure_before_start_raises_from_head() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    waiter = asyncio.create_task(follower.head())
    await asyncio.sleep(0)
    leader.fail(ValueError("bad"))
    with pytest.raises(ValueError):
        await waiter
    with pytest.raises(ValueError):
        await body(follower)
    assert_released(inflight, "k")


async def test_error_status_is_shared_as_is() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(429, [(b"retry-after", b"1")])
    leader.publish(b'{"error":{"type":"rate_limit"}}')
    leader.finish()
    assert await follower.head() == (429, [(b"retry-after", b"1")])
    assert await body(follower) == b'{"error":{"type":"rate_limit"}}'


async def test_leader_cancellation_does_not_leave_followers_hanging() -> None:
    inflight, upstream = InFlight(), Upstream()
    upstream.gate.clear()  # the upstream never answers
    leader = asyncio.create_task(request(inflight, "k", upstream))
    await asyncio.sleep(0.01)
    followers = [asyncio.create_task(request(inflight, "k", upstream)) for _ in range(5)]
    await asyncio.sleep(0.01)
    leader.cancel()  # the leader's client went away: its owner fails the broadcast
    results = await asyncio.wait_for(asyncio.gather(*followers, return_exceptions=True), timeout=2)
    assert all(isinstance(r, LeaderGone) for r in results)
    assert len({id(r) for r in results}) == 1  # the one error the leader was failed with
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert_released(inflight, "k")
    # a follower that has sent nothing yet may retry: it becomes the new leader
    upstream.gate.set()
    assert await request(inflight, "k", upstream) == (200, HEADERS, b"".join(CHUNKS))
    assert upstream.calls == 2


async def test_leader_failed_after_start_fails_followers_and_releases_the_key() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, HEADERS)
    gone = LeaderGone("client went away before any chunk")
    leader.fail(gone)
    assert await follower.head() == (200, HEADERS)  # it had started
    with pytest.raises(LeaderGone) as raised:
        await body(follower)
    assert raised.value is gone
    assert leader.closed and leader.error is gone
    assert_released(inflight, "k")


async def test_keys_are_independent_and_released_on_finish() -> None:
    inflight = InFlight()
    a = inflight.join("a")
    b = inflight.join("b")
    assert isinstance(a, Broadcast) and isinstance(b, Broadcast)
    a.start(200, HEADERS)
    a.finish()
    assert isinstance(inflight.join("a"), Broadcast)  # released: a new leader
    assert isinstance(inflight.join("b"), Subscriber)


async def test_the_registry_keeps_no_closed_broadcast() -> None:
    inflight = InFlight()
    finished, failed = inflight.join("a"), inflight.join("b")
    finished.start(200, HEADERS)
    finished.finish()
    failed.fail(LeaderGone("gone"))
    refs = [weakref.ref(finished), weakref.ref(failed)]
    del finished, failed
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


async def test_misuse_is_refused() -> None:
    leader = InFlight().join("k")
    with pytest.raises(RuntimeError):
        leader.publish(b"x")  # before start
    with pytest.raises(RuntimeError):
        leader.finish()
    leader.start(200, HEADERS)
    with pytest.raises(RuntimeError):
        leader.start(200, HEADERS)
    leader.finish()
    with pytest.raises(RuntimeError):
        leader.publish(b"late")
    leader.fail(ValueError("ignored after finish"))
    assert leader.error is None


async def test_the_first_of_fail_and_finish_wins() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, HEADERS)
    first = LeaderGone("first")
    leader.fail(first)
    leader.fail(LeaderGone("second"))  # e.g. OpenTap.close after the relay failed it
    leader.finish()
    assert leader.error is first and not leader.done
    with pytest.raises(LeaderGone) as raised:
        await body(follower)
    assert raised.value is first


# --------------------------------------------------------------------------- bounded memory (issue 11, point 14)


async def test_an_overflowing_broadcast_keeps_only_what_followers_have_not_read() -> None:
    inflight = InFlight(max_buffer=100)
    leader = inflight.join("k")
    follower = inflight.join("k")
    assert isinstance(leader, Broadcast) and isinstance(follower, Subscriber)
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in follower:
            received.append(chunk)

    task = asyncio.create_task(consume())
    leader.start(200, HEADERS)
    for i in range(50):  # 1,000 bytes through a 100-byte buffer
        leader.publish(bytes([65 + i % 26]) * 20)
        assert leader.held <= 100 + 20
        await asyncio.sleep(0)
        if i == 10:
            assert leader.overflowed
            newcomer = inflight.join("k")
            assert isinstance(newcomer, Broadcast), "no newcomer joins an overflowed answer"
            assert newcomer is not leader
    leader.finish()
    await asyncio.wait_for(task, 2)
    assert b"".join(received) == b"".join(bytes([65 + i % 26]) * 20 for i in range(50))
    assert leader.size == 1000 and leader.chunks == [] and leader.held == 0


async def test_a_follower_too_far_behind_an_overflowing_leader_is_dropped() -> None:
    inflight = InFlight(max_buffer=100)
    leader = inflight.join("k")
    slow = inflight.join("k")
    leader.start(200, HEADERS)
    leader.publish(b"a" * 60)
    chunks = aiter(slow)
    assert await anext(chunks) == b"a" * 60  # read one chunk, then stop reading
    for _ in range(10):
        leader.publish(b"b" * 60)
        assert leader.held <= 100 + 60  # never the whole answer
    with pytest.raises(FollowerTooSlow):
        await anext(chunks)
    leader.finish()
    assert leader.chunks == [] and leader.held == 0


async def test_below_the_limit_everything_is_kept_for_late_followers() -> None:
    inflight = InFlight(max_buffer=1000)
    leader = inflight.join("k")
    leader.start(200, HEADERS)
    for _ in range(9):
        leader.publish(b"x" * 100)
    late = inflight.join("k")
    assert isinstance(late, Subscriber) and not leader.overflowed
    leader.finish()
    assert await body(late) == b"x" * 900
    assert_released(inflight, "k")
    assert leader.chunks == []  # read by its only follower, then dropped


async def test_a_finished_broadcast_without_followers_holds_nothing() -> None:
    leader = InFlight().join("k")
    leader.start(200, HEADERS)
    leader.publish(b"answer")
    leader.finish()
    assert leader.chunks == [] and leader.held == 0
