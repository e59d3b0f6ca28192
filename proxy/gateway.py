"""A proxied request's way through: read, rewrite (chat routes), forward, relay."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .cache import Subscriber, credential_fingerprint
from .caching import CACHE_HEADER, ResponseCache, follow, request_policy
from .chat import ChatRequest, manages, parse_chat_body, prepare_chat
from .pipeline import conversation_keys
from .config import Config, Upstream
from .errors import (NotFound, PayloadTooLarge, ProxyError, UpstreamTimeout, UpstreamUnavailable,
                     error_response)
from .records import RequestRecord
from .routing import Router, chat_dialect, dialect_of
from .telemetry import Telemetry
from .upstream import CLIENT_GONE, WHOLE_BODY_LIMIT, UpstreamClient, relay

log = logging.getLogger("ctxwarden")

# Bodies larger than this are counted and rewritten on a worker thread.
OFFLOAD_BODY_BYTES = 256 * 1024
_ROUTES = {"openai": "chat_completions", "anthropic": "messages"}
_UPSTREAM_ERROR_KINDS = {UpstreamUnavailable: "connect", UpstreamTimeout: "timeout"}


@dataclass(frozen=True)
class Incoming:
    """The parts of a client request the upstream call needs."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""


class Gateway:
    """Everything a request needs that is derived from one config."""

    def __init__(self, config: Config, client: UpstreamClient, telemetry: Telemetry, cache: ResponseCache):
        self.config = config
        self.router = Router(config.upstreams)
        self.client = client
        self.telemetry = telemetry
        self.cache = cache

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        dialect = chat_dialect(request.method, path)
        record = RequestRecord(route=_ROUTES.get(dialect, "forward"), method=request.method, path=path)
        record.dialect = dialect or dialect_of(path, "anthropic-version" in request.headers)

        async def answer() -> Response:
            if not path.startswith("/v1/"):
                raise NotFound(f"ctxwarden serves no path {path!r}; the provider APIs live under /v1/")
            if dialect is None:
                return await self.forward(request, record)
            raw = await read_body(request, self.config.server.max_body_bytes)
            incoming = Incoming(request.method, path, request.scope["query_string"], request.headers.raw)
            return await self.chat(incoming, raw, dialect, record)

        response = await self._answer(record, answer)
        response.background = BackgroundTask(self._finished, record)
        return response

    async def answer_task(self, dialect: str, path: str, headers: list[tuple[bytes, bytes]],
                          body: dict) -> tuple[int, bytes, dict[str, str]]:
        """One task of a parallel run, through the same rewrite and cache as a
        single request; the answer read whole."""
        record = RequestRecord(route="parallel_task", method="POST", path=path, dialect=dialect)
        raw = json.dumps(body, ensure_ascii=False).encode()
        response = await self._answer(record, lambda: self.chat(Incoming("POST", path, b"", headers), raw,
                                                                dialect, record))
        try:
            if isinstance(response, StreamingResponse):
                content = b"".join([chunk async for chunk in response.body_iterator])
            else:
                content = bytes(response.body)
        finally:
            await self._finished(record)
        return response.status_code, content, {k.decode("latin-1"): v.decode("latin-1")
                                               for k, v in response.raw_headers}

    async def _answer(self, record: RequestRecord, answer) -> Response:
        """Run `answer`, mapping proxy errors to the dialect's error response."""
        self.telemetry.start(record)
        try:
            response = await answer()
        except ProxyError as exc:
            log.info("%s %s -> %d: %s", record.method, record.path, exc.status, exc.message)
            record.error_kind = _UPSTREAM_ERROR_KINDS.get(type(exc), "")
            response = error_response(exc, record.dialect)
        except BaseException:
            record.status = 500
            self.telemetry.finish(record)
            raise
        record.status = response.status_code
        return response

    async def _finished(self, record: RequestRecord) -> None:
        # A coroutine, so Starlette's BackgroundTask runs it on the loop, not in
        # a worker thread.
        if record.tap is not None:
            # Normally ended by the relay already; this catches a stream whose
            # body was never iterated, so coalesced followers are not left waiting.
            await record.tap.end(CLIENT_GONE)
        self.telemetry.finish(record)

    async def chat(self, request: Incoming, raw: bytes, dialect: str, record: RequestRecord) -> Response:
        started = time.perf_counter()
        body = parse_chat_body(raw)
        upstream = self.router.choose(dialect, body["model"])
        chat = await self._prepare(request, raw, body, dialect, upstream)
        record.rewrite_seconds = time.perf_counter() - started
        record.rewrite, record.tokens_before, record.tokens_after = chat.rewrite, chat.tokens_before, chat.tokens_after
        record.rewrite_reason = chat.reason
        record.cost_sent, record.cost_passthrough = chat.cost_sent, chat.cost_passthrough
        extra = chat.headers()
        policy = request_policy(self.config.cache, upstream.name, request.path, chat.body,
                                request.headers, request.header(b"cache-control"))
        if policy.key is None:
            record.cache = "bypass"
            response = await self._send(record, upstream, request, chat.content)
            return await relay(response, extra + [(CACHE_HEADER, b"bypass")], dialect, record)
        hit = await self.cache.lookup(policy, dialect, extra)
        if hit is not None:
            record.cache = "hit"
            return hit
        entry = self.cache.join(policy)
        if isinstance(entry, Subscriber):
            record.cache = "hit"
            return await follow(entry, dialect, policy.stream, extra)
        record.cache = "miss"
        record.tap = self.cache.tap(policy, dialect, entry)
        try:
            response = await self._send(record, upstream, request, chat.content)
        except BaseException as exc:
            await record.tap.end(exc if isinstance(exc, Exception) else CLIENT_GONE)
            raise
        return await relay(response, extra + [(CACHE_HEADER, b"miss")], dialect, record, record.tap)

    async def _prepare(self, request: Incoming, raw: bytes, body: dict, dialect: str,
                       upstream: Upstream) -> ChatRequest:
        """Rewrite, continuing the conversation's state from the cache backend
        (shared by replicas on Redis) and keeping the new state there."""
        tokens = self.config.token_management
        pricing = upstream.pricing_for(body["model"])
        large = len(raw) > OFFLOAD_BODY_BYTES
        if not manages(tokens, dialect, body, raw):
            return await _call(large, prepare_chat, tokens, dialect, raw, body, pricing)
        keys = await _call(large, conversation_keys, body, dialect)
        tenant = credential_fingerprint(request.headers)
        state = await self.cache.load_conversation(tenant, keys)
        chat = await _call(large, prepare_chat, tokens, dialect, raw, body, pricing, state, keys)
        if chat.state is not None and (state is None or chat.state.key != state.key):
            await self.cache.store_conversation(tenant, chat.state)
        return chat

    async def _send(self, record: RequestRecord, upstream: Upstream, request: Incoming, content,
                    streamed_length: int | None = None):
        record.upstream = upstream.name
        started = time.perf_counter()
        record.overhead_seconds = started - record.started
        try:
            return await self.client.send(upstream, request.method, request.path, request.query,
                                          request.headers, content, streamed_length)
        finally:
            record.upstream_seconds = time.perf_counter() - started

    async def forward(self, request: Request, record: RequestRecord) -> Response:
        upstream = self.router.choose(record.dialect, None)
        limit = self.config.server.max_body_bytes
        declared = _declared_length(request, limit)
        if declared is not None and declared <= WHOLE_BODY_LIMIT:
            content, streamed_length = (await request.body() if declared else None), None
        elif declared is None and "transfer-encoding" not in request.headers:
            content, streamed_length = None, None
        else:
            content, streamed_length = _limited(request.stream(), limit), declared
        incoming = Incoming(request.method, request.url.path, request.scope["query_string"], request.headers.raw)
        response = await self._send(record, upstream, incoming, content, streamed_length)
        return await relay(response, [], stream_error_dialect=None, record=record)


async def _call(offload: bool, function, *args):
    # Large bodies are counted and rewritten on a worker thread, so one huge
    # request does not stall every other request on the event loop.
    return await anyio.to_thread.run_sync(function, *args) if offload else function(*args)


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return int(declared)


async def _limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    _declared_length(request, limit)
    return b"".join([chunk async for chunk in _limited(request.stream(), limit)])
