"""A proxied request's way through: check the path, read the body, take an
upstream slot, rewrite (chat routes), forward, relay.

Limits, all in the dialect's error shape and with nothing sent upstream:
a path with dot segments or encoded slashes is a 400; a body over
`max_body_bytes` a 413; a body not received whole within `body_timeout` a
408. The body is read before the request waits for one of the
`max_connections` slots, at most `slot_timeout` (503 + Retry-After after).
A client that goes away before its answer is ready cancels the upstream
call (unless a coalesced follower waits for the same answer) and is counted
as 499, like one that goes away mid-upload."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .cache import Subscriber, credential_fingerprint
from .caching import CACHE_HEADER, CacheTap, ResponseCache, follow, request_policy
from .chat import ChatRequest, manages, parse_chat_body, prepare_chat
from .config import Config, Upstream
from .dialects import chat_dialect, dialect_for, get_dialect
from .errors import (BodyTimeout, ClientClosed, NoSlot, NotFound, PayloadTooLarge, ProxyError,
                     UpstreamTimeout, UpstreamUnavailable, error_response)
from .observability import Telemetry
from .observability.record import RequestRecord
from .parallel.gate import UpstreamGate
from .pipeline import conversation_keys
from .routing import Routes, Target, check_path
from .upstream import CLIENT_GONE, UpstreamClient, relay

log = logging.getLogger("ctxwarden")

# Bodies larger than this are counted and rewritten on a worker thread.
OFFLOAD_BODY_BYTES = 256 * 1024
_UPSTREAM_ERROR_KINDS = {UpstreamUnavailable: "connect", UpstreamTimeout: "timeout"}


@dataclass(frozen=True)
class Incoming:
    """The parts of a client request the upstream call needs; `path` is the
    checked path with the client's percent-escapes (routing.check_path)."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""


class Slot:
    """A request's interactive slot of the upstream gate: waited for at most
    `timeout` right before the upstream call, released once the response has
    been sent (stream included)."""

    def __init__(self, gate: UpstreamGate):
        self.gate = gate
        self.held = False

    async def take(self, timeout: float) -> None:
        try:
            with anyio.fail_after(timeout):
                await self.gate.acquire("interactive")
        except TimeoutError:
            raise NoSlot(f"all {self.gate.pool_size} upstream connection slots stayed busy for "
                         f"{timeout:g} s; retry shortly") from None
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.release("interactive")


@dataclass
class OpenTap:
    """The cache tap a cached miss opens, kept beside the request's record
    (plain data only) until the request ends: while the tap is open,
    coalesced followers may wait on it."""

    tap: CacheTap | None = None


class Gateway:
    """Everything a request needs that is derived from one config."""

    def __init__(self, config: Config, client: UpstreamClient, telemetry: Telemetry, cache: ResponseCache):
        self.config = config
        # Keys are read here, once per config: raises ConfigError when one is missing.
        self.routes = Routes.resolve(config.upstreams)
        self.client = client
        self.telemetry = telemetry
        self.cache = cache

    async def serve(self, scope: Scope, receive: Receive, send: Send, gate: UpstreamGate) -> None:
        """Answer one proxied request; the slot it takes is held until the
        whole response has been sent."""
        request = Request(scope, receive)
        path = request.url.path
        record = RequestRecord(route="forward", method=request.method, path=path,
                               dialect=dialect_for(path, request.headers).name)
        slot, opened = Slot(gate), OpenTap()
        try:
            response = await self._answer(record, lambda: self._proxied(request, record, opened, slot))
            if record.status != ClientClosed.status:
                await response(scope, receive, send)
        finally:
            slot.release()
            await self._finished(record, opened)

    async def _proxied(self, request: Request, record: RequestRecord, opened: OpenTap, slot: Slot) -> Response:
        raw_path = request.scope.get("raw_path") or quote(request.scope["path"]).encode()
        path = check_path(raw_path)
        chat = chat_dialect(request.method, path.decoded)
        record.path, record.route = path.decoded, chat.route if chat else "forward"
        record.dialect = (chat or dialect_for(path.decoded, request.headers)).name
        dialect = chat.name if chat else None
        if not path.decoded.startswith("/v1/"):
            raise NotFound(f"ctxwarden serves no path {path.decoded!r}; the provider APIs live under /v1/")
        server = self.config.server
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        incoming = Incoming(request.method, path.raw, request.scope["query_string"], request.headers.raw)

        async def work() -> Response:
            if dialect is None:
                return await self.forward(incoming, body, record, slot)
            return await self.chat(incoming, body, dialect, record, opened, slot)

        return await until_disconnected(request.receive, work, keep_going=lambda: _followed(opened))

    async def answer_task(self, dialect: str, path: str, headers: list[tuple[bytes, bytes]],
                          body: dict) -> tuple[int, bytes, dict[str, str]]:
        """One task of a parallel run, through the same rewrite and cache as a
        single request; the answer read whole. Its slot is the caller's."""
        record = RequestRecord(route="parallel_task", method="POST", path=path, dialect=dialect)
        opened = OpenTap()
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            response = await self._answer(record, lambda: self.chat(Incoming("POST", path, b"", headers), raw,
                                                                    dialect, record, opened))
            if isinstance(response, StreamingResponse):
                content = b"".join([chunk async for chunk in response.body_iterator])
            else:
                content = bytes(response.body)
        finally:
            await self._finished(record, opened)
        return response.status_code, content, {k.decode("latin-1"): v.decode("latin-1")
                                               for k, v in response.raw_headers}

    async def _answer(self, record: RequestRecord, answer: Callable[[], Awaitable[Response]]) -> Response:
        """Run `answer`, mapping proxy errors to the dialect's error response.
        The caller ends the record (`_finished`) whatever happens."""
        self.telemetry.start(record)
        try:
            response = await answer()
        except ProxyError as exc:
            log.info("%s %s -> %d: %s", record.method, record.path, exc.status, exc.message)
            record.error_kind = _UPSTREAM_ERROR_KINDS.get(type(exc), "")
            response = error_response(exc, get_dialect(record.dialect))
        except anyio.get_cancelled_exc_class():
            record.status = ClientClosed.status
            raise
        except BaseException:
            record.status = 500
            raise
        record.status = response.status_code
        return response

    async def _finished(self, record: RequestRecord, opened: OpenTap) -> None:
        if opened.tap is not None:
            # Normally ended by the relay already; this catches a stream whose
            # body was never iterated, so coalesced followers are not left waiting.
            with anyio.CancelScope(shield=True):
                await opened.tap.end(CLIENT_GONE)
        self.telemetry.finish(record)

    async def chat(self, request: Incoming, raw: bytes, dialect: str, record: RequestRecord, opened: OpenTap,
                   slot: Slot | None = None) -> Response:
        started = time.perf_counter()
        body = parse_chat_body(raw)
        target = self.routes.route(dialect, body["model"])
        chat = await self._prepare(request, raw, body, dialect, target.upstream)
        record.rewrite_seconds = time.perf_counter() - started
        record.rewrite, record.tokens_before, record.tokens_after = chat.rewrite, chat.tokens_before, chat.tokens_after
        record.rewrite_reason = chat.reason
        record.cost_sent, record.cost_passthrough = chat.cost_sent, chat.cost_passthrough
        extra = chat.headers()
        policy = request_policy(self.config.cache, target.name, request.path, chat.body,
                                request.headers, request.header(b"cache-control"), query=request.query)
        if policy.key is None:
            record.cache = "bypass"
            response = await self._send(record, target, request, chat.content, slot)
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
        tap = opened.tap = self.cache.tap(policy, dialect, entry)
        try:
            response = await self._send(record, target, request, chat.content, slot)
        except BaseException as exc:
            await tap.end(exc if isinstance(exc, Exception) else CLIENT_GONE)
            raise
        return await relay(response, extra + [(CACHE_HEADER, b"miss")], dialect, record, tap)

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
        tenant = credential_fingerprint(request.headers, query=request.query)
        state = await self.cache.load_conversation(tenant, keys)
        chat = await _call(large, prepare_chat, tokens, dialect, raw, body, pricing, state, keys)
        if chat.state is not None and (state is None or chat.state.key != state.key):
            await self.cache.store_conversation(tenant, chat.state)
        return chat

    async def _send(self, record: RequestRecord, target: Target, request: Incoming, content: bytes | None,
                    slot: Slot | None):
        if slot is not None:
            await slot.take(self.config.server.slot_timeout)
        record.upstream = target.name
        started = time.perf_counter()
        record.overhead_seconds = started - record.started
        try:
            return await self.client.send(target, request.method, request.path, request.query,
                                          request.headers, content)
        finally:
            record.upstream_seconds = time.perf_counter() - started

    async def forward(self, request: Incoming, body: bytes, record: RequestRecord, slot: Slot | None) -> Response:
        target = self.routes.route(record.dialect, None)
        response = await self._send(record, target, request, body or None, slot)
        return await relay(response, [], stream_error_dialect=None, record=record)


def _followed(opened: OpenTap) -> bool:
    """Whether coalesced followers wait for the answer this request fetches."""
    broadcast = getattr(opened.tap, "broadcast", None)
    return broadcast is not None and broadcast.followers > 0 and not broadcast.closed


async def until_disconnected(receive: Receive, work: Callable[[], Awaitable],
                             keep_going: Callable[[], bool] = lambda: False):
    """`work()`'s result, or ClientClosed when the client disconnected first:
    the work (and the upstream call in it) is then cancelled, unless
    `keep_going()` says someone else waits for it. Call once the request body
    has been read whole: from then on the server's `receive` only reports the
    disconnect."""
    result = error = None
    finished = False
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if keep_going():
                log.info("client went away; its answer is still fetched for a coalesced follower")
            else:
                tasks.cancel_scope.cancel()

        tasks.start_soon(watch)
        try:
            result = await work()
            finished = True
        except Exception as exc:  # re-raised below, outside the task group
            error = exc
        tasks.cancel_scope.cancel()
    if error is not None:
        raise error
    if not finished:
        raise ClientClosed("the client closed the connection before its answer was ready")
    return result


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


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body: at most `limit` bytes (413), arrived within `timeout`
    seconds (408); a client gone mid-upload is ClientClosed (499)."""
    _declared_length(request, limit)
    try:
        with anyio.fail_after(timeout):
            return b"".join([chunk async for chunk in _limited(request.stream(), limit)])
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise ClientClosed("the client closed the connection while sending its body") from None
