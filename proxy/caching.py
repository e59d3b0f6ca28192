"""The response cache at the gateway: lookup, replay of hits as JSON or SSE,
in-flight coalescing (in process, then across replicas on Redis: see
:mod:`ctxwarden.cache.distributed`), and storing answers that completed cleanly.

The key covers the upstream, the path and query string, the rewritten body
(less `stream` and its options), the headers that change an answer and a
fingerprint of every credential the caller sent (headers and query parameters,
see :mod:`ctxwarden.cache.keys`), so tenants never share entries.

Coalescing key: the response key, the form asked for (JSON or SSE) and the
request's normalised ``Accept-Encoding``. Followers are sent the leader's bytes
as they are, so only requests that would get the same bytes from the upstream
may share them: a follower that accepts only ``identity`` never receives a
gzip answer fetched for a leader that accepted gzip. (Decoding for such a
follower was the alternative; it would mean a second, streaming decoder per
follower and rewritten ``Content-Encoding``/``Content-Length`` headers, and
the bytes a follower gets would no longer be what the upstream sent. Clients
of one kind send one ``Accept-Encoding`` (the SDKs all send the same), so the
key costs next to no coalescing.)

Size limit: :data:`MAX_ANSWER_BYTES` (8 MiB, :mod:`ctxwarden.cache.entry`). The
cache step keeps at most that many bytes of an answer as relayed, and at most
that many bytes of its decoded (gunzipped / inflated) JSON: past either it
drops what it kept, stops decoding and stores nothing, while the relay keeps
streaming the answer to the client untouched. A coalesced follower holds at
most that much before it streams too (see :mod:`ctxwarden.cache.coalesce`)."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.responses import Response, StreamingResponse

from .cache import (
    MAX_ANSWER_BYTES,
    CacheBackend,
    CachedAnswer,
    FollowerTooSlow,
    InFlight,
    MemoryCache,
    StreamRecorder,
    Subscriber,
    accepted_encodings,
    answer_headers,
    conversation_store_key,
    credential_fingerprint,
    is_cacheable_request,
    replay_sse,
    response_cache_key,
)
from .cache.coalesce import Broadcast
from .cache.distributed import Lease, ReplicaCoalescing
from .config import CacheSettings
from .dialects import ANSWER_HEADERS, Dialect
from .errors import ProxyError, UpstreamUnavailable
from .pipeline import ConversationState
from .upstream import CLIENT_GONE

log = logging.getLogger("ctxwarden.cache")

CACHE_HEADER = b"x-ctxwarden-cache"
COALESCED = (b"x-ctxwarden-coalesced", b"1")
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
    encoding: str = "-"     # the normalised Accept-Encoding (coalescing key)


def request_policy(settings: CacheSettings, upstream: str, path: str, body: dict,
                   headers: list[tuple[bytes, bytes]], cache_control: str,
                   query: bytes = b"") -> CachePolicy:
    """`query`: the raw query string the request is forwarded with (part of
    the key, and its credential parameters part of the tenant)."""
    directives = {d.strip().lower() for d in cache_control.split(",")}
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if not settings.enabled or "no-store" in directives or not is_cacheable_request(body, settings.cache_sampled):
        return CachePolicy(None, False, stream, include_usage)
    key = response_cache_key(upstream, path, body, credential_fingerprint(headers, query=query),
                             extra=answer_headers(headers, ANSWER_HEADERS), query=query)
    return CachePolicy(key, "no-cache" not in directives, stream, include_usage, accepted_encodings(headers))


def make_backend(settings: CacheSettings) -> CacheBackend:
    if settings.backend == "redis":
        from .cache.redis import RedisCache

        return RedisCache(settings.resolved_redis_url() or "", settings.key_prefix, settings.ttl,
                          timeout=settings.redis_timeout)
    return MemoryCache(settings.max_entries, settings.ttl, settings.max_bytes)


class ResponseCache:
    def __init__(self, backend: CacheBackend, ttl: float, coalesce_wait: float = 0.0):
        self.backend = backend
        self.ttl = ttl
        self.inflight = InFlight()
        #: cross-replica coalescing: on a shared (Redis) backend only
        self.replicas: ReplicaCoalescing | None = None
        if backend.name == "redis" and coalesce_wait > 0:
            self.replicas = ReplicaCoalescing(backend, coalesce_wait)  # type: ignore[arg-type]

    async def lookup(self, policy: CachePolicy, dialect: Dialect,
                     extra_headers: list[tuple[bytes, bytes]]) -> Response | None:
        """A hit replayed in the form the client asked for, or None."""
        assert policy.key is not None
        if not policy.read:
            return None
        answer = _answer(await self.backend.get(policy.key))
        if answer is None:
            return None
        return _replay(answer, policy, dialect, extra_headers + [(CACHE_HEADER, b"hit")])[0]

    async def across_replicas(self, tap: CacheTap, extra_headers: list[tuple[bytes, bytes]]) -> Response | None:
        """After a miss, for the process's leader: lead the identical requests
        of other replicas too (the tap releases the lock once the answer is
        stored or failed), or serve the answer their leader stored, as a hit
        (the process's own followers get it too). None: call upstream."""
        policy = tap.policy
        if self.replicas is None or policy.key is None or not policy.read:
            return None
        joined = await self.replicas.join(policy.key)
        if isinstance(joined, Lease):
            tap.lease = joined
            return None
        answer = _answer(joined)
        if answer is None:
            return None
        response, head, chunks = _replay(answer, policy, tap.dialect,
                                         extra_headers + [(CACHE_HEADER, b"hit"), COALESCED])
        tap.replayed(answer.status, head, chunks)
        return response

    def join(self, policy: CachePolicy) -> Broadcast | Subscriber | None:
        """Lead or follow the identical request in flight; None when not coalescing."""
        if policy.key is None or not policy.read:
            return None
        return self.inflight.join(coalescing_key(policy))


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


def _answer(stored: bytes | None) -> CachedAnswer | None:
    if stored is None:
        return None
    try:
        return CachedAnswer.from_bytes(stored)
    except ValueError:
        return None


def _replay(answer: CachedAnswer, policy: CachePolicy, dialect: Dialect, extra_headers: list[tuple[bytes, bytes]]
            ) -> tuple[Response, list[tuple[bytes, bytes]], list[bytes]]:
    """A stored answer as the client asked for it: the response, and its own
    headers and body chunks (what coalesced followers are sent)."""
    if policy.stream:
        head = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        chunks = replay_sse(dialect, answer.body, policy.include_usage)
        response: Response = StreamingResponse(_iterate(chunks), status_code=answer.status)
        response.raw_headers = list(head)
    else:
        head = [(b"content-type", answer.content_type.encode("latin-1"))]
        chunks = [answer.body]
        response = Response(answer.body, status_code=answer.status)
        response.raw_headers += head
    response.raw_headers += extra_headers + [(b"age", str(answer.age()).encode())]
    return response, head, chunks


def coalescing_key(policy: CachePolicy) -> str:
    """Requests in flight at once under one such key share one upstream call:
    same response key, same form (JSON or SSE), same accepted encodings."""
    return f"{policy.key}:{'sse' if policy.stream else 'json'}:{policy.encoding}"


_TOO_SLOW = "this answer is too large to share with a follower that reads it this slowly"


async def follow(subscriber: Subscriber, dialect: Dialect, stream: bool,
                 extra_headers: list[tuple[bytes, bytes]], limit: int = MAX_ANSWER_BYTES) -> Response:
    """A coalesced follower's response: the leader's answer, as it arrives.

    A JSON follower waits for the whole answer while it is at most `limit`
    bytes (so a leader's failure still reaches it as an error response), and
    streams the rest of a larger one rather than holding it whole."""
    status, headers = await subscriber.head()
    headers = headers + extra_headers + [(CACHE_HEADER, b"hit"), COALESCED]
    if not stream:
        chunks = aiter(subscriber)
        buffered: list[bytes] = []
        size = 0
        while size <= limit:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                response = Response(b"".join(buffered), status_code=status)
                response.raw_headers += headers
                return response
            except FollowerTooSlow as exc:
                raise UpstreamUnavailable(_TOO_SLOW) from exc
            buffered.append(chunk)
            size += len(chunk)
        response = StreamingResponse(_drain(buffered, chunks), status_code=status)
        response.raw_headers = headers
        return response
    response = StreamingResponse(_follow_chunks(subscriber, dialect), status_code=status)
    response.raw_headers = headers
    return response


async def _drain(buffered: list[bytes], chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """What a JSON follower already holds, then the rest as it arrives. A
    failure after the first byte can only break the connection off (as the
    leader's own relay does): a JSON body has no in-band error."""
    while buffered:
        yield buffered.pop(0)
    async for chunk in chunks:
        yield chunk


async def _follow_chunks(subscriber: Subscriber, dialect: Dialect) -> AsyncIterator[bytes]:
    try:
        async for chunk in subscriber:
            yield chunk
    except ProxyError as exc:
        yield dialect.stream_error_event(exc.message)
    except FollowerTooSlow:
        yield dialect.stream_error_event(_TOO_SLOW)


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


class CacheTap:
    """Relay tap: publishes to coalesced followers and stores a clean answer.

    It keeps only what it may store: nothing for an error status, a content
    type it does not store or an encoding it cannot decode; and at most
    `limit` bytes as relayed and `limit` bytes decoded (gzip and deflate are
    inflated incrementally as chunks arrive, never past `limit` + 1 bytes).
    Past the limit it drops what it kept and stops looking (`abandoned`); the
    relay goes on streaming the answer to the client as the upstream sent it."""

    def __init__(self, cache: ResponseCache, policy: CachePolicy, dialect: Dialect, broadcast: Broadcast | None,
                 limit: int = MAX_ANSWER_BYTES):
        self.cache = cache
        self.policy = policy
        self.dialect = dialect
        self.broadcast = broadcast
        self.limit = limit
        #: the cross-replica lock this request leads under, released at the end
        self.lease: Lease | None = None
        self.status = 0
        self.content_type = ""
        self.encoding: str | None = None
        self.recorder: StreamRecorder | None = None
        self.body: list[bytes] = []
        self.ended = False
        self.collecting = False
        self.abandoned = False
        self.received = 0   # bytes relayed while collecting
        self.decoded = 0    # bytes of decoded JSON kept
        self._decoder = None

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                self.content_type = value.decode("latin-1")
            elif lower == b"content-encoding":
                self.encoding = value.decode("latin-1").strip().lower()
        if 200 <= status < 300 and self.policy.key is not None:
            if self.content_type.startswith("text/event-stream") and self.encoding in (None, "identity"):
                self.recorder = StreamRecorder(self.dialect, max_bytes=self.limit)
                self.collecting = True
            elif self.content_type.startswith("application/json") and self.encoding in _DECODERS:
                wbits = _DECODERS[self.encoding]
                self._decoder = None if wbits is None else zlib.decompressobj(wbits)
                self.collecting = True
        if self.broadcast is not None:
            self.broadcast.start(status, headers)

    def chunk(self, data: bytes) -> None:
        if self.broadcast is not None:
            self.broadcast.publish(data)
        if not self.collecting or not data:
            return
        self.received += len(data)
        if self.received > self.limit:
            self._abandon(f"more than {self.limit} bytes relayed")
        elif self.recorder is not None:
            self.recorder.feed(data)
        elif self._decoder is None:
            self.body.append(bytes(data))
            self.decoded += len(data)
        else:
            try:
                # max_length > 0 always: we stop as soon as decoded exceeds limit
                out = self._decoder.decompress(data, self.limit + 1 - self.decoded)
            except zlib.error:
                self._abandon(f"undecodable {self.encoding} body")
                return
            self.decoded += len(out)
            if self.decoded > self.limit or self._decoder.unconsumed_tail:
                self._abandon(f"more than {self.limit} bytes decoded")
            else:
                self.body.append(out)

    def _abandon(self, why: str) -> None:
        log.debug("not storing the answer for %s: %s", (self.policy.key or "")[:16], why)
        self.collecting = False
        self.abandoned = True
        self.body = []
        self.recorder = None
        self._decoder = None

    def replayed(self, status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> None:
        """The request was answered from the cache after all (another replica's
        leader stored it): the process's followers get that answer; nothing to store."""
        self.ended = True
        if self.broadcast is not None:
            self.broadcast.start(status, headers)
            for chunk in chunks:
                self.broadcast.publish(chunk)
            self.broadcast.finish()

    async def end(self, error: Exception | None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            await self._end(error)
        finally:
            if self.lease is not None:
                # Stored or failed: other replicas stop waiting. Shielded: the
                # request may be ending in a cancelled scope (bounded by redis_timeout).
                with anyio.CancelScope(shield=True):
                    await self.lease.release()

    async def _end(self, error: Exception | None) -> None:
        if self.broadcast is not None:
            if error is None:
                self.broadcast.finish()
            else:
                self.broadcast.fail(error)
        if error is not None or not self.collecting or self.policy.key is None:
            self.body = []
            return
        body = self.recorder.result() if self.recorder is not None else self._decoded_json()
        self.body, self.recorder, self._decoder = [], None, None
        if body is None or len(body) > self.limit:
            return
        answer = CachedAnswer(status=self.status, content_type="application/json", body=body,
                              dialect=self.dialect.name, created=time.time())
        await self.cache.store(self.policy.key, answer)

    def _decoded_json(self) -> bytes | None:
        decoder = self._decoder
        if decoder is not None and (not decoder.eof or decoder.unused_data):
            return None  # a truncated or multi-member body: not the answer whole
        return b"".join(self.body)


class OpenTap:
    """The one owner of a request's cache tap, from the miss that opens it to
    the end of the request: while it is open, coalesced followers wait on it;
    the relay ends it when the answer is through, and whatever the relay did
    not end (a stream never iterated, a failed send) is ended here."""

    def __init__(self) -> None:
        self.tap: CacheTap | None = None

    def open(self, cache: ResponseCache, policy: CachePolicy, dialect: Dialect, broadcast: Broadcast | None) -> CacheTap:
        self.tap = CacheTap(cache, policy, dialect, broadcast)
        return self.tap

    def followed(self) -> bool:
        """Whether coalesced followers wait for the answer this request fetches."""
        broadcast = self.tap.broadcast if self.tap is not None else None
        return broadcast is not None and broadcast.followers > 0 and not broadcast.closed

    async def fail(self, error: BaseException) -> None:
        if self.tap is not None:
            await self.tap.end(error if isinstance(error, Exception) else CLIENT_GONE)

    async def close(self) -> None:
        if self.tap is not None:
            # Shielded: the request may be ending in a cancelled scope.
            with anyio.CancelScope(shield=True):
                await self.tap.end(CLIENT_GONE)
