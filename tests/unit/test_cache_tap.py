"""The cache step at the gateway (proxy.caching): what it keeps of an answer on
its way, the size limit, bounded decompression, and the coalescing key
(issue 11, points 13 and 14). No sockets."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest
from starlette.responses import Response, StreamingResponse

from ctxwarden.dialects import openai
from ctxwarden.cache import CachedAnswer, InFlight, MemoryCache, Subscriber
from ctxwarden.caching import (
    CachePolicy,
    CacheTap,
    ResponseCache,
    coalescing_key,
    follow,
    request_policy,
)
from ctxwarden.config import CacheSettings
from ctxwarden.errors import UpstreamUnavailable

LIMIT = 64 * 1024
JSON = [(b"content-type", b"application/json")]
GZIP = JSON + [(b"content-encoding", b"gzip")]
BODY = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def _no_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTXWARDEN_CACHE_SALT", raising=False)


def _answer(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()


def _cache() -> ResponseCache:
    return ResponseCache(MemoryCache(100, 60, 64 * 1024 * 1024), 60)


def _tap(cache: ResponseCache, key: str = "k", limit: int = LIMIT) -> CacheTap:
    return CacheTap(cache, CachePolicy(key, True, False, False), openai, None, limit=limit)


async def _stored(cache: ResponseCache, key: str = "k") -> bytes | None:
    raw = await cache.backend.get(key)
    return None if raw is None else CachedAnswer.from_bytes(raw).body


def _pieces(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# --------------------------------------------------------------------------- size limit


async def test_an_answer_within_the_limit_is_stored() -> None:
    cache = _cache()
    tap = _tap(cache)
    tap.start(200, JSON)
    for piece in _pieces(_answer("small")):
        tap.chunk(piece)
    await tap.end(None)
    assert await _stored(cache) == _answer("small")


async def test_an_answer_above_the_limit_is_not_stored_nor_held() -> None:
    cache = _cache()
    tap = _tap(cache)
    tap.start(200, JSON)
    big = _answer("x" * (2 * LIMIT))
    for piece in _pieces(big):
        tap.chunk(piece)
        assert sum(map(len, tap.body)) <= LIMIT  # never held whole
    assert tap.abandoned and tap.body == []
    await tap.end(None)
    assert await _stored(cache) is None


async def test_a_gzip_answer_is_stored_decoded() -> None:
    cache = _cache()
    tap = _tap(cache)
    tap.start(200, GZIP)
    for piece in _pieces(gzip.compress(_answer("zipped")), 7):
        tap.chunk(piece)
    await tap.end(None)
    assert await _stored(cache) == _answer("zipped")


@pytest.mark.parametrize("encoding,compress", [
    (b"gzip", lambda data: gzip.compress(data, compresslevel=9)),
    (b"deflate", lambda data: zlib.compress(data, 9)),
])
async def test_a_compression_bomb_is_inflated_no_further_than_the_limit(encoding, compress) -> None:
    cache = _cache()
    tap = _tap(cache)
    bomb = compress(_answer("a" * (256 * LIMIT)))  # 16 MiB inflated, a few KiB on the wire
    assert len(bomb) < LIMIT
    tap.start(200, JSON + [(b"content-encoding", encoding)])
    tap.chunk(bomb)  # as the relay hands over a small body: in one piece
    assert tap.abandoned and tap.body == []
    assert tap.decoded <= LIMIT + 1
    await tap.end(None)
    assert await _stored(cache) is None


async def test_bomb_fed_in_pieces_stops_decoding_at_the_limit() -> None:
    cache = _cache()
    tap = _tap(cache)
    tap.start(200, GZIP)
    for piece in _pieces(gzip.compress(_answer("b" * (64 * LIMIT))), 256):
        tap.chunk(piece)
        assert tap.decoded <= LIMIT + 1
    assert tap.abandoned
    await tap.end(None)
    assert await _stored(cache) is None


async def test_truncated_or_corrupt_gzip_is_not_stored() -> None:
    whole = gzip.compress(_answer("cut"))
    for body in (whole[:-8], b"\x1f\x8b not gzip at all"):
        cache = _cache()
        tap = _tap(cache)
        tap.start(200, GZIP)
        tap.chunk(body)
        await tap.end(None)
        assert await _stored(cache) is None


async def test_a_stream_above_the_limit_is_not_recorded() -> None:
    cache = _cache()
    tap = _tap(cache)
    tap.start(200, [(b"content-type", b"text/event-stream")])
    event = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"xxxxxxxx"}}]}\n\n'
    for _ in range(2 * LIMIT // len(event)):
        tap.chunk(event)
    tap.chunk(b"data: [DONE]\n\n")
    assert tap.abandoned and tap.recorder is None
    await tap.end(None)
    assert await _stored(cache) is None


async def test_nothing_is_kept_for_what_will_not_be_stored() -> None:
    for status, headers in ((500, JSON), (200, [(b"content-type", b"text/plain")]),
                            (200, JSON + [(b"content-encoding", b"br")])):
        cache = _cache()
        tap = _tap(cache)
        tap.start(status, headers)
        tap.chunk(_answer("x"))
        assert tap.body == [] and not tap.collecting
        await tap.end(None)
        assert await _stored(cache) is None


# --------------------------------------------------------------------------- coalescing key


def _policy(*headers: tuple[bytes, bytes], stream: bool = False, query: bytes = b"") -> CachePolicy:
    body = {**BODY, "stream": True} if stream else BODY
    return request_policy(CacheSettings(), "openai", "/v1/chat/completions", body,
                          [(b"authorization", b"Bearer sk-a"), *headers], "", query=query)


def test_the_coalescing_key_holds_the_accepted_encodings() -> None:
    gzip_ = _policy((b"accept-encoding", b"gzip, deflate"))
    same = _policy((b"Accept-Encoding", b"deflate,GZIP;q=1.0"))
    identity = _policy((b"accept-encoding", b"identity"))
    absent = _policy()
    assert gzip_.key == identity.key == absent.key  # one stored answer (kept decoded) serves all
    assert coalescing_key(gzip_) == coalescing_key(same)
    assert len({coalescing_key(gzip_), coalescing_key(identity), coalescing_key(absent)}) == 3
    assert coalescing_key(_policy(stream=True)) != coalescing_key(absent)


def test_the_policy_key_holds_the_query_and_every_credential() -> None:
    assert _policy(query=b"a=1").key != _policy().key
    assert _policy(query=b"key=x").key != _policy(query=b"key=y").key
    assert _policy((b"x-goog-api-key", b"a")).key != _policy((b"x-goog-api-key", b"b")).key
    assert _policy((b"cookie", b"s=a")).key != _policy((b"cookie", b"s=b")).key
    assert _policy((b"idempotency-key", b"1")).key == _policy((b"idempotency-key", b"2")).key


async def test_followers_with_other_encodings_lead_their_own_call() -> None:
    cache = _cache()
    leader = cache.join(_policy((b"accept-encoding", b"gzip")))
    follower = cache.join(_policy((b"accept-encoding", b"gzip")))
    other = cache.join(_policy((b"accept-encoding", b"identity")))
    assert not isinstance(leader, Subscriber) and isinstance(follower, Subscriber)
    assert not isinstance(other, Subscriber), "identity must not follow a gzip leader"


# --------------------------------------------------------------------------- JSON followers


async def test_a_json_follower_of_a_small_answer_gets_one_response() -> None:
    inflight = InFlight()
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, JSON)
    leader.publish(b'{"a":')
    leader.publish(b"1}")
    leader.finish()
    response = await follow(follower, openai, False, [], limit=LIMIT)
    assert type(response) is Response and response.body == b'{"a":1}'


async def test_a_json_follower_of_a_large_answer_streams_it() -> None:
    inflight = InFlight(max_buffer=LIMIT)
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, JSON)
    big = _pieces(b"y" * (4 * LIMIT))

    async def lead() -> None:
        for piece in big:
            leader.publish(piece)
            await asyncio.sleep(0)
        leader.finish()

    task = asyncio.create_task(lead())
    response = await follow(follower, openai, False, [], limit=LIMIT)
    assert isinstance(response, StreamingResponse)
    received = b"".join([chunk async for chunk in response.body_iterator])
    await task
    assert received == b"".join(big)


async def test_a_json_follower_left_behind_gets_an_error_response() -> None:
    inflight = InFlight(max_buffer=100)
    leader = inflight.join("k")
    follower = inflight.join("k")
    leader.start(200, JSON)
    for _ in range(5):
        leader.publish(b"z" * 60)  # the follower has read nothing: it falls behind
    with pytest.raises(UpstreamUnavailable):
        await follow(follower, openai, False, [], limit=1000)
