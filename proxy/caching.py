"""The response cache at the gateway: lookup, replay of hits as JSON or SSE,
in-flight coalescing, and storing answers that completed cleanly.

The key covers the upstream, the path, the rewritten body (less `stream` and
its options) and a fingerprint of the caller's credential, so tenants never
share entries."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from .cache import (
    CacheBackend, CachedAnswer, InFlight, MemoryCache, StreamRecorder, Subscriber, answer_headers,
    conversation_store_key, credential_fingerprint, is_cacheable_request, replay_sse, response_cache_key,
)
from .cache.coalesce import Broadcast
from .config import CacheSettings
from .errors import ProxyError, stream_error_event
from .pipeline import ConversationState

log = logging.getLogger("ctxwarden.cache")

CACHE_HEADER = b"x-ctxwarden-cache"
# Message boundaries looked up for a conversation's state, newest first: a
# request that adds more messages than this to a known history is replayed.
MAX_STATE_LOOKUPS = 64
_DECODERS = {None: None, "identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class CachePolicy:
    """What this request may do with the cache."""

    key: str | None         # None: bypass entirely
    read: bool              # False for Cache-Control: no-cache
    stream: bool            # the client asked for SSE
    include_usage: bool


def request_policy(settings: CacheSettings, upstream: str, path: str, body: dict,
                   headers: list[tuple[bytes, bytes]], cache_control: str) -> CachePolicy:
    directives = {d.strip().lower() for d in cache_control.split(",")}
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if not settings.enabled or "no-store" in directives or not is_cacheable_request(body, settings.cache_sampled):
        return CachePolicy(None, False, stream, include_usage)
    key = response_cache_key(upstream, path, body, credential_fingerprint(headers),
                             extra=answer_headers(headers))
    return CachePolicy(key, "no-cache" not in directives, stream, include_usage)


def make_backend(settings: CacheSettings) -> CacheBackend:
    if settings.backend == "redis":
        from .cache.redis import RedisCache

        return RedisCache(settings.resolved_redis_url() or "", settings.key_prefix, settings.ttl,
                          timeout=settings.redis_timeout)
    return MemoryCache(settings.max_entries, settings.ttl, settings.max_bytes)


class ResponseCache:
    def __init__(self, backend: CacheBackend, ttl: float):
        self.backend = backend
        self.ttl = ttl
        self.inflight = InFlight()

    async def lookup(self, policy: CachePolicy, dialect: str,
                     extra_headers: list[tuple[bytes, bytes]]) -> Response | None:
        """A hit replayed in the form the client asked for, or None."""
        assert policy.key is not None
        if not policy.read:
            return None
        stored = await self.backend.get(policy.key)
        if stored is None:
            return None
        try:
            answer = CachedAnswer.from_bytes(stored)
        except ValueError:
            return None
        headers = extra_headers + [(CACHE_HEADER, b"hit"), (b"age", str(answer.age()).encode())]
        if policy.stream:
            events = replay_sse(dialect, answer.body, policy.include_usage)
            response = StreamingResponse(_iterate(events), status_code=answer.status,
                                         media_type="text/event-stream")
            response.raw_headers += [(b"cache-control", b"no-cache")] + headers
            return response
        response = Response(answer.body, status_code=answer.status, media_type=answer.content_type)
        response.raw_headers += headers
        return response

    def join(self, policy: CachePolicy) -> Broadcast | Subscriber | None:
        """Lead or follow the identical request in flight; None when not coalescing."""
        if policy.key is None or not policy.read:
            return None
        return self.inflight.join(f"{policy.key}:{'sse' if policy.stream else 'json'}")

    def tap(self, policy: CachePolicy, dialect: str, broadcast: Broadcast | None) -> "CacheTap":
        return CacheTap(self, policy, dialect, broadcast)

    async def store(self, key: str, answer: CachedAnswer) -> None:
        await self.backend.set(key, answer.to_bytes(), self.ttl)

    async def load_conversation(self, tenant: str, keys: list[str]) -> ConversationState | None:
        """The stored state of the longest known prefix of this conversation,
        newest boundary first (a turn usually adds a message or two)."""
        for key in reversed(keys[-MAX_STATE_LOOKUPS:]):
            stored = await self.backend.get(conversation_store_key(key, tenant))
            if stored is not None:
                try:
                    return ConversationState.from_bytes(stored)
                except (ValueError, TypeError, KeyError):
                    return None
        return None

    async def store_conversation(self, tenant: str, state: ConversationState) -> None:
        await self.backend.set(conversation_store_key(state.key, tenant), state.to_bytes(), self.ttl)


async def follow(subscriber: Subscriber, dialect: str, stream: bool,
                 extra_headers: list[tuple[bytes, bytes]]) -> Response:
    """A coalesced follower's response: the leader's answer, as it arrives."""
    status, headers = await subscriber.head()
    headers = headers + extra_headers + [(CACHE_HEADER, b"hit"), (b"x-ctxwarden-coalesced", b"1")]
    if not stream:
        response = Response(await subscriber.body(), status_code=status)
        response.raw_headers += headers
        return response
    response = StreamingResponse(_follow_chunks(subscriber, dialect), status_code=status)
    response.raw_headers = headers
    return response


async def _follow_chunks(subscriber: Subscriber, dialect: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in subscriber:
            yield chunk
    except ProxyError as exc:
        yield stream_error_event(dialect, exc.message)


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


class CacheTap:
    """Relay tap: publishes to coalesced followers and stores a clean answer."""

    def __init__(self, cache: ResponseCache, policy: CachePolicy, dialect: str, broadcast: Broadcast | None):
        self.cache = cache
        self.policy = policy
        self.dialect = dialect
        self.broadcast = broadcast
        self.status = 0
        self.content_type = ""
        self.encoding: str | None = None
        self.recorder: StreamRecorder | None = None
        self.body: list[bytes] = []
        self.ended = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                self.content_type = value.decode("latin-1")
            elif lower == b"content-encoding":
                self.encoding = value.decode("latin-1").strip().lower()
        if self.content_type.startswith("text/event-stream") and self.encoding in (None, "identity"):
            self.recorder = StreamRecorder(self.dialect)
        if self.broadcast is not None:
            self.broadcast.start(status, headers)

    def chunk(self, data: bytes) -> None:
        if self.broadcast is not None:
            self.broadcast.publish(data)
        if self.recorder is not None:
            self.recorder.feed(data)
        else:
            self.body.append(data)

    async def end(self, error: Exception | None) -> None:
        if self.ended:
            return
        self.ended = True
        if self.broadcast is not None:
            if error is None:
                self.broadcast.finish()
            else:
                self.broadcast.fail(error)
        if error is not None or not 200 <= self.status < 300 or self.policy.key is None:
            return
        body = self.recorder.result() if self.recorder is not None else self._decoded_json()
        if body is None:
            return
        answer = CachedAnswer(status=self.status, content_type="application/json", body=body,
                              dialect=self.dialect, created=time.time())
        await self.cache.store(self.policy.key, answer)

    def _decoded_json(self) -> bytes | None:
        if not self.content_type.startswith("application/json") or self.encoding not in _DECODERS:
            return None
        raw = b"".join(self.body)
        wbits = _DECODERS[self.encoding]
        try:
            return raw if wbits is None else zlib.decompress(raw, wbits)
        except zlib.error:
            return None
