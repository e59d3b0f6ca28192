"""The in-process backend and the stored answer form."""

from __future__ import annotations

import json

import pytest

from ctxwarden.cache.backend import CacheBackend
from ctxwarden.cache.entry import CachedAnswer
from ctxwarden.cache.memory import MemoryCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_get_set_delete_and_protocol() -> None:
    cache = MemoryCache(max_entries=10, ttl=60)
    assert isinstance(cache, CacheBackend) and cache.name == "memory"
    assert await cache.get("k") is None
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.delete("absent")
    assert (cache.hits, cache.misses) == (1, 2)
    await cache.close()
    assert len(cache) == 0


async def test_ttl_expiry_and_shorter_per_entry_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(max_entries=10, ttl=60, timer=clock)
    await cache.set("long", b"1")
    await cache.set("short", b"2", ttl=5)
    await cache.set("capped", b"3", ttl=600)  # capped at the configured 60 s
    clock.now += 6
    assert await cache.get("short") is None
    assert await cache.get("long") == b"1"
    clock.now += 55
    assert await cache.get("long") is None
    assert await cache.get("capped") is None
    await cache.set("zero", b"4", ttl=0)
    assert await cache.get("zero") is None


async def test_lru_eviction_by_entries() -> None:
    cache = MemoryCache(max_entries=3, ttl=60)
    for k in "abc":
        await cache.set(k, k.encode())
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("d", b"d")
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    assert len(cache) == 3


async def test_eviction_by_bytes_and_by_entries_together() -> None:
    cache = MemoryCache(max_entries=100, ttl=60, max_bytes=100)
    await cache.set("a", b"x" * 40)
    await cache.set("b", b"x" * 40)
    await cache.get("a")
    await cache.set("c", b"x" * 40)  # 3 * 41 > 100: evicts b, the least recently used
    assert await cache.get("b") is None
    assert await cache.get("a") is not None and await cache.get("c") is not None
    assert cache.currsize_bytes <= 100
    await cache.set("huge", b"x" * 200)  # larger than the whole budget: not stored
    assert await cache.get("huge") is None
    assert await cache.get("a") is not None

    small = MemoryCache(max_entries=2, ttl=60, max_bytes=10_000)
    for k in "abc":
        await small.set(k, b"1")
    assert len(small) == 2 and await small.get("a") is None


async def test_overwrite_replaces() -> None:
    cache = MemoryCache(max_entries=2, ttl=60, max_bytes=50)
    await cache.set("a", b"1" * 30)
    await cache.set("a", b"2" * 30)
    assert await cache.get("a") == b"2" * 30
    assert len(cache) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0, ttl=1)
    with pytest.raises(ValueError):
        MemoryCache(max_entries=1, ttl=0)
    with pytest.raises(ValueError):
        MemoryCache(max_entries=1, ttl=1, max_bytes=0)


async def test_memory_cache_is_a_backend() -> None:
    assert isinstance(MemoryCache(max_entries=1, ttl=1), CacheBackend)


# --------------------------------------------------------------------------- CachedAnswer


def test_cached_answer_round_trip() -> None:
    body = json.dumps({"id": "x", "content": "multi\nline ✓"}, ensure_ascii=False).encode()
    answer = CachedAnswer(status=200, content_type="application/json", body=body, dialect="anthropic", created=1712345678.25)
    data = answer.to_bytes()
    header, _, rest = data.partition(b"\n")
    assert json.loads(header)["v"] == 1 and rest == body
    assert CachedAnswer.from_bytes(data) == answer
    assert answer.age(now=1712345688.0) == 9


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"no newline",
        b"not json\n{}",
        b'{"v":2,"status":200,"content_type":"a","dialect":"openai","created":1}\n{}',
        b'{"v":1,"status":"200","content_type":"a","dialect":"openai","created":1}\n{}',
        b'{"v":1,"content_type":"a","dialect":"openai","created":1}\n{}',
        b"[1]\n{}",
        b"\xff\n{}",
    ],
)
def test_cached_answer_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        CachedAnswer.from_bytes(data)


async def test_cached_answer_through_memory_cache() -> None:
    cache = MemoryCache(max_entries=4, ttl=60)
    answer = CachedAnswer(200, "application/json", b'{"ok":true}', "openai", 1.0)
    await cache.set("k", answer.to_bytes())
    assert CachedAnswer.from_bytes(await cache.get("k")) == answer
