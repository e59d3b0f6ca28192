"""The Redis backend against a real redis-server on loopback (no mock stands in for Redis)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from ctxwarden.cache.backend import CacheBackend
from ctxwarden.cache.entry import CachedAnswer
from ctxwarden.cache.redis import RedisCache, redact_url
from tests.redis_server import RedisServer, free_port


def _prefix() -> str:
    return f"ctxwarden-test:{uuid.uuid4().hex[:8]}:"


async def test_get_set_delete_ttl(redis_url: str) -> None:
    cache = RedisCache(redis_url, prefix=_prefix(), ttl=60)
    try:
        assert isinstance(cache, CacheBackend) and cache.name == "redis"
        assert await cache.get("k") is None
        value = CachedAnswer(200, "application/json", b'{"a":"\xc3\xa9"}', "openai", time.time()).to_bytes()
        await cache.set("k", value)
        assert await cache.get("k") == value
        await cache.set("short", b"v", ttl=0.15)
        assert await cache.get("short") == b"v"
        await asyncio.sleep(0.3)
        assert await cache.get("short") is None
        await cache.delete("k")
        assert await cache.get("k") is None
        assert await cache.ping()
        assert cache.failures == 0 and cache.available
    finally:
        await cache.close()


async def test_keys_are_prefixed_and_prefixes_do_not_mix(redis_url: str) -> None:
    import redis.asyncio as aioredis

    p1, p2 = _prefix(), _prefix()
    a, b = RedisCache(redis_url, p1, ttl=60), RedisCache(redis_url, p2, ttl=60)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await a.set("same", b"from-a")
        assert await b.get("same") is None
        assert await raw.get(p1 + "same") == b"from-a"
        ttl_ms = await raw.pttl(p1 + "same")
        assert 0 < ttl_ms <= 60_000
    finally:
        await raw.aclose()
        await a.close()
        await b.close()


async def test_replicas_share_answers(redis_url: str) -> None:
    prefix = _prefix()
    one, two = RedisCache(redis_url, prefix, ttl=60), RedisCache(redis_url, prefix, ttl=60)
    try:
        await one.set("k", b"shared")
        assert await two.get("k") == b"shared"
    finally:
        await one.close()
        await two.close()


async def test_outage_never_raises_and_caching_resumes(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache(own_redis.url, _prefix(), ttl=60, timeout=0.3, backoff_initial=0.2, backoff_max=0.8)
    try:
        await cache.set("k", b"before")
        assert await cache.get("k") == b"before"

        own_redis.stop()  # the outage, mid-run
        with caplog.at_level(logging.WARNING, logger="ctxwarden.cache.redis"):
            t0 = time.monotonic()
            assert await cache.get("k") is None  # first failure: fails fast (connection refused)
            await cache.set("k2", b"x")
            await cache.delete("k")
            first = time.monotonic() - t0
            assert cache.failures >= 1 and not cache.available
            # inside the backoff window: no attempt at all, no latency
            t1 = time.monotonic()
            for _ in range(200):
                assert await cache.get("k") is None
                await cache.set("k", b"y")
            assert time.monotonic() - t1 < 0.2
            assert cache.skipped >= 400
            # after the window, it probes again, fails again and counts it
            before = cache.failures
            await asyncio.sleep(0.25)
            assert await cache.get("k") is None
            assert cache.failures == before + 1
        assert first < 1.0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # rate-limited: one line for the outage
        assert own_redis.url.split("/0")[0].replace("redis://", "") in warnings[0].getMessage()

        own_redis.start()  # back, on the same port (empty: no persistence)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await cache.set("k", b"after")
            if await cache.get("k") == b"after":
                break
            await asyncio.sleep(0.1)
        assert await cache.get("k") == b"after"
        assert cache.available
        failures = cache.failures
        await cache.set("k3", b"z")
        assert await cache.get("k3") == b"z"
        assert cache.failures == failures
    finally:
        await cache.close()


async def test_unresponsive_redis_costs_at_most_the_timeout(own_redis: RedisServer) -> None:
    """A Redis that accepts but never answers (paused with SIGSTOP) is cut off by the timeout."""
    import signal

    cache = RedisCache(own_redis.url, _prefix(), ttl=60, timeout=0.2, backoff_initial=5)
    try:
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v"
        proc = own_redis._proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            # a guard against hanging, far above the 0.2 s timeout (not a speed test)
            results = await asyncio.wait_for(asyncio.gather(*(cache.get("k") for _ in range(20))), 10)
            assert results == [None] * 20
            assert cache.failures >= 1
            failures = cache.failures
            assert await cache.get("k") is None  # breaker open: Redis is not even tried
            assert cache.failures == failures
        finally:
            proc.send_signal(signal.SIGCONT)
    finally:
        await cache.close()


async def test_unreachable_from_the_start(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    cache = RedisCache(url, _prefix(), ttl=60, timeout=0.3)
    try:
        with caplog.at_level(logging.DEBUG, logger="ctxwarden.cache.redis"):
            assert await cache.get("k") is None
            await cache.set("k", b"v")
            assert not await cache.ping()
        assert cache.failures == 1 and cache.skipped == 2
        assert "hunter2-secret" not in caplog.text
        assert "hunter2-secret" not in repr(cache)
        assert ":***@" in caplog.text
    finally:
        await cache.close()


async def test_cancellation_propagates(own_redis: RedisServer) -> None:
    import signal

    cache = RedisCache(own_redis.url, _prefix(), ttl=60, timeout=2)
    try:
        await cache.set("k", b"v")
        proc = own_redis._proc
        proc.send_signal(signal.SIGSTOP)
        try:
            task = asyncio.create_task(cache.get("k"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cache.failures == 0  # a cancelled call is not a Redis failure
        finally:
            proc.send_signal(signal.SIGCONT)
        assert await cache.get("k") == b"v"
    finally:
        await cache.close()


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h/1", "redis://user:***@h/1"),
        ("redis://h:6379", "redis://h:6379"),
        ("rediss://tok@h", "rediss://***@h"),
        ("unix:///tmp/r.sock?db=0&password=pw", "unix:///tmp/r.sock?db=0&password=***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
