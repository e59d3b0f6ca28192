"""Cross-replica coalescing (ctxwarden.cache.distributed and its hook in
ctxwarden.caching) against a real redis-server on loopback: the lock, its
owner, the follower's wait and every way that wait ends."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from ctxwarden.cache import CachedAnswer, InFlight, Subscriber
from ctxwarden.cache.distributed import Lease, ReplicaCoalescing, lock_key
from ctxwarden.cache.redis import RedisCache
from ctxwarden.caching import CachePolicy, ResponseCache, coalescing_key, follow, request_policy
from ctxwarden.config import CacheSettings
from ctxwarden.dialects import openai
from tests.redis_server import RedisServer

ANSWER = CachedAnswer(200, "application/json", json.dumps({
    "id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "shared"}, "finish_reason": "stop"}]}).encode(),
    "openai", time.time())


def _redis(url: str, prefix: str, timeout: float = 1.0) -> RedisCache:
    return RedisCache(url, prefix, ttl=60, timeout=timeout, backoff_initial=0.2, backoff_max=0.4)


@pytest.fixture
async def replicas(redis_url: str):
    """Two replicas' backends on one Redis, one key prefix."""
    prefix = f"ctxwarden-test:{uuid.uuid4().hex[:8]}:"
    one, two = _redis(redis_url, prefix), _redis(redis_url, prefix)
    yield one, two
    await one.close()
    await two.close()


async def test_the_first_leads_and_a_follower_gets_its_stored_answer(replicas) -> None:
    one, two = replicas
    a, b = ReplicaCoalescing(one, wait=10), ReplicaCoalescing(two, wait=10)
    lease = await a.join("k")
    assert isinstance(lease, Lease)
    follower = asyncio.create_task(b.join("k"))
    await asyncio.sleep(0.1)
    assert not follower.done(), "the follower waits while the lock is held"
    await one.set("k", ANSWER.to_bytes())   # the leader stores, then releases
    await lease.release()
    assert await follower == ANSWER.to_bytes()
    assert (b.coalesced, sum(b.fallbacks.values())) == (1, 0)
    assert await one.get(lock_key("k")) is None, "the lock is gone"


async def test_the_lock_is_released_only_by_its_owner(replicas) -> None:
    one, two = replicas
    a = ReplicaCoalescing(one, wait=0.3)
    lease = await a.join("k")
    assert isinstance(lease, Lease)
    # someone else's token does not release it
    assert not await two.delete_if(lock_key("k"), b"not-the-token")
    assert await two.get(lock_key("k")) == lease.token
    # the lock outlives nobody: after `wait` it expires and another replica leads
    await asyncio.sleep(0.5)
    b = ReplicaCoalescing(two, wait=10)
    second = await b.join("k")
    assert isinstance(second, Lease) and second.token != lease.token
    await lease.release()   # the old leader finishing late
    assert await two.get(lock_key("k")) == second.token, "the old leader deleted the new leader's lock"
    await second.release()
    assert await two.get(lock_key("k")) is None
    await second.release()  # twice is harmless


async def test_a_follower_falls_back_when_the_leader_fails(replicas) -> None:
    one, two = replicas
    a, b = ReplicaCoalescing(one, wait=10), ReplicaCoalescing(two, wait=10)
    lease = await a.join("k")
    follower = asyncio.create_task(b.join("k"))
    await asyncio.sleep(0.1)
    await lease.release()   # released without an answer: an error, a broken stream, too large
    assert await follower is None
    assert b.fallbacks == {"leader_failed": 1, "expired": 0, "redis": 0} and b.coalesced == 0


async def test_a_follower_falls_back_when_its_wait_expires(replicas) -> None:
    one, two = replicas
    a, b = ReplicaCoalescing(one, wait=30), ReplicaCoalescing(two, wait=0.3)
    assert isinstance(await a.join("k"), Lease)   # a leader that never finishes
    assert await b.join("k") is None
    assert b.fallbacks == {"leader_failed": 0, "expired": 1, "redis": 0}


async def test_a_leader_serves_an_answer_stored_just_before_it_took_the_lock(replicas) -> None:
    one, two = replicas
    await one.set("k", ANSWER.to_bytes())
    b = ReplicaCoalescing(two, wait=10)
    assert await b.join("k") == ANSWER.to_bytes()
    assert await two.get(lock_key("k")) is None, "the lock it took is released"


async def test_redis_down_means_no_lock_and_no_wait(own_redis: RedisServer) -> None:
    prefix = f"ctxwarden-test:{uuid.uuid4().hex[:8]}:"
    one, two = _redis(own_redis.url, prefix, timeout=0.3), _redis(own_redis.url, prefix, timeout=0.3)
    a, b = ReplicaCoalescing(one, wait=30), ReplicaCoalescing(two, wait=30)
    try:
        assert isinstance(await a.join("k"), Lease)
        own_redis.stop()
        started = time.monotonic()
        assert await b.join("k") is None      # the SET fails: go upstream, no lock
        assert await b.join("k") is None      # the breaker is open: not even tried
        assert time.monotonic() - started < 10, "nobody waited out the 30 s"
        assert sum(b.fallbacks.values()) == 0, "no request waited"
        assert two.failures >= 1 and two.skipped >= 1
    finally:
        await one.close()
        await two.close()


async def test_redis_going_down_mid_wait_ends_the_wait(own_redis: RedisServer) -> None:
    prefix = f"ctxwarden-test:{uuid.uuid4().hex[:8]}:"
    one, two = _redis(own_redis.url, prefix, timeout=0.3), _redis(own_redis.url, prefix, timeout=0.3)
    a, b = ReplicaCoalescing(one, wait=30), ReplicaCoalescing(two, wait=30)
    try:
        assert isinstance(await a.join("k"), Lease)
        follower = asyncio.create_task(b.join("k"))
        await asyncio.sleep(0.1)
        own_redis.stop()
        assert await asyncio.wait_for(follower, 10) is None
        assert b.fallbacks == {"leader_failed": 0, "expired": 0, "redis": 1}
    finally:
        await one.close()
        await two.close()


# ------------------------------------------------------------------ the hook in ResponseCache

BODY = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def _policy(token: str, stream: bool = False) -> CachePolicy:
    body = dict(BODY, stream=True) if stream else BODY
    return request_policy(CacheSettings(), "openai", "/v1/chat/completions", body,
                          [(b"authorization", b"Bearer " + token.encode())], "")


async def test_tenants_never_share_a_lock(replicas) -> None:
    one, two = replicas
    first, second = _policy("sk-one"), _policy("sk-two")
    assert first.key != second.key
    a, b = ReplicaCoalescing(one, wait=10), ReplicaCoalescing(two, wait=10)
    assert isinstance(await a.join(first.key), Lease)
    assert isinstance(await b.join(second.key), Lease), "another credential leads its own call"


async def test_the_tap_releases_the_lock_after_storing(replicas) -> None:
    one, two = replicas
    leader, other = ResponseCache(one, 60, coalesce_wait=10), ResponseCache(two, 60, coalesce_wait=10)
    policy = _policy("sk-one")
    leader_tap = _open(leader, policy)
    assert await leader.across_replicas(leader_tap, []) is None and leader_tap.lease is not None
    waiting = asyncio.create_task(other.across_replicas(_open(other, policy), [(b"x-extra", b"1")]))
    await asyncio.sleep(0.1)
    leader_tap.start(200, [(b"content-type", b"application/json")])
    leader_tap.chunk(ANSWER.body)
    await leader_tap.end(None)
    response = await waiting
    assert response is not None and response.body == ANSWER.body
    headers = dict(response.raw_headers)
    assert headers[b"x-ctxwarden-cache"] == b"hit" and headers[b"x-ctxwarden-coalesced"] == b"1"
    assert headers[b"x-extra"] == b"1"
    assert await one.get(lock_key(policy.key)) is None


async def test_a_failed_leader_releases_the_lock_and_stores_nothing(replicas) -> None:
    one, two = replicas
    leader, other = ResponseCache(one, 60, coalesce_wait=10), ResponseCache(two, 60, coalesce_wait=10)
    policy = _policy("sk-one")
    tap = _open(leader, policy)
    await leader.across_replicas(tap, [])
    waiting = asyncio.create_task(other.across_replicas(_open(other, policy), []))
    await asyncio.sleep(0.1)
    tap.start(500, [(b"content-type", b"application/json")])   # not storable
    tap.chunk(b'{"error": {"message": "boom"}}')
    await tap.end(None)
    assert await waiting is None, "the follower calls upstream itself"
    assert other.replicas is not None and other.replicas.fallbacks["leader_failed"] == 1
    assert await one.get(policy.key) is None


async def test_the_process_followers_of_a_cross_replica_follower_get_the_answer_as_sse(replicas) -> None:
    one, two = replicas
    cache = ResponseCache(two, 60, coalesce_wait=10)
    policy = _policy("sk-one", stream=True)
    await one.set(policy.key, ANSWER.to_bytes())   # the other replica's leader stored it
    inflight = InFlight()
    broadcast = inflight.join(coalescing_key(policy))
    follower = inflight.join(coalescing_key(policy))
    assert isinstance(follower, Subscriber)
    response = await cache.across_replicas(_open(cache, policy, broadcast), [])
    assert response is not None
    own = b"".join([chunk async for chunk in response.body_iterator])
    followed = await follow(follower, openai, True, [])
    theirs = b"".join([chunk async for chunk in followed.body_iterator])
    assert own == theirs and b'"shared"' in own and own.rstrip().endswith(b"data: [DONE]")
    assert dict(followed.raw_headers)[b"content-type"].startswith(b"text/event-stream")


async def test_memory_backend_has_no_replicas() -> None:
    from ctxwarden.cache import MemoryCache

    assert ResponseCache(MemoryCache(10, 60, 1 << 20), 60, coalesce_wait=10).replicas is None


def _open(cache: ResponseCache, policy: CachePolicy, broadcast=None):
    from ctxwarden.caching import OpenTap

    return OpenTap().open(cache, policy, openai, broadcast)
