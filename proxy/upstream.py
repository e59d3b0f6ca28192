"""Forwarding to an upstream over the process's one connection pool (an httpx
transport, our own HTTP/1.1 pool under it: see transport.py), and relaying its
answer back: whole for small bodies, chunk by chunk for streams."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Protocol
from urllib.parse import unquote

import anyio
import httpx
from starlette.responses import Response, StreamingResponse

from .config import ServerSettings, Upstream
from .dialects import Dialect, get_dialect
from .errors import BadPath, UpstreamTimeout, UpstreamUnavailable
from .incoming import first_value
from .observability.record import RequestRecord
from .retrying import attempts_header
from .routing import Target
from .transport import Http11Transport

log = logging.getLogger("ctxwarden.upstream")

# RFC 9110 7.6.1 connection-specific headers, never forwarded either way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
# Recomputed by httpx / Starlette for the body actually sent.
_RECOMPUTED = frozenset({b"host", b"content-length"})
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key"})
# The proxy's own: a client key (clientkeys.py) is for ctxwarden, never for an upstream.
_PROXY_ONLY = frozenset({b"x-ctxwarden-key", b"x-ctxwarden-admin-token"})
# Answers up to this size are read whole and sent in one piece: cheaper than a
# chunked relay, and small enough not to matter for memory.
WHOLE_BODY_LIMIT = 1 << 20


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    listed = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(v.strip().lower() for v in value.split(b","))
    return frozenset(listed)


_REQUEST_DROP = HOP_BY_HOP | _RECOMPUTED | _PROXY_ONLY
_KEYED_REQUEST_DROP = _REQUEST_DROP | _CREDENTIAL_HEADERS   # the configured key replaces the client's
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}


def _dropping(raw: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in raw if k.lower() not in drop]
    if len(kept) < len(raw) and any(k.lower() == b"connection" for k, _ in raw):
        # the names a Connection header lists are hop-by-hop too
        listed = _connection_listed(raw)
        kept = [(k, v) for k, v in kept if k.lower() not in listed]
    return kept


def request_headers(raw: list[tuple[bytes, bytes]], upstream: Upstream,
                    api_key: str | None) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream should get them."""
    headers = _dropping(raw, _KEYED_REQUEST_DROP if api_key is not None else _REQUEST_DROP)
    if api_key is not None:
        headers += get_dialect(upstream.dialect).credential_headers(api_key)
    return headers


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return _dropping(raw, _RESPONSE_DROP)


class UpstreamClient:
    """The process's one upstream connection pool; what to send where comes
    with each request as a Target (URL, key and timeouts of one config together).

    Requests go straight to an httpx transport, never through an
    httpx.AsyncClient: a proxy wants none of the client layer's extras.
    Redirects must reach the caller as they are, and a cookie jar shared by
    every tenant would hand one caller's upstream cookies to the next.
    """

    def __init__(self, server: ServerSettings, transport: httpx.AsyncBaseTransport | None = None):
        # our pool by default (transport.py); tests may hand in httpx's own (respx mocks it)
        self._transport = transport or Http11Transport(
            httpx.Limits(max_connections=server.max_connections,
                         max_keepalive_connections=server.max_keepalive_connections),
            trust_env=server.trust_env)

    async def unreachable(self, upstreams: list[Upstream]) -> dict[str, str]:
        """Upstreams that refuse a TCP connection now, with the reason."""
        problems = {}
        for upstream in upstreams:
            url = httpx.URL(upstream.base_url)
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                with anyio.fail_after(min(upstream.timeouts.connect, 2.0)):
                    stream = await anyio.connect_tcp(url.host, port)
                await stream.aclose()
            except (OSError, TimeoutError) as exc:
                problems[upstream.name] = type(exc).__name__
        return problems

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def send(self, target: Target, method: str, path: str, query: bytes,
                   headers: list[tuple[bytes, bytes]], content: bytes | None) -> httpx.Response:
        """Send and return the response with its body not yet read.

        `path` is the client's checked path with its percent-escapes
        (routing.check_path). Retried once, and only when the upstream closed a
        reused keep-alive connection before answering anything.
        """
        url = upstream_url(target.upstream.base_url, path, query)
        sent = request_headers(headers, target.upstream, target.api_key)
        for attempt in (1, 2):
            trace = _ConnectionTrace()
            extensions = {"timeout": target.timeout(), "trace": trace, "ca_bundle": target.upstream.ca_bundle}
            try:
                return await self._send(method, url, sent, content, extensions)
            except httpx.TimeoutException as exc:
                log.warning("upstream %s timed out (%s) on %s %s", target.name, type(exc).__name__, method, path)
                raise UpstreamTimeout(f"upstream {target.name!r} did not answer in time") from exc
            except httpx.HTTPError as exc:
                if attempt == 1 and not trace.fresh and _closed_before_answering(exc):
                    log.info("upstream %s closed a reused connection before answering (%s); retrying once "
                             "on %s %s", target.name, type(exc).__name__, method, path)
                    continue
                log.warning("upstream %s unreachable (%s) on %s %s", target.name, type(exc).__name__, method, path)
                raise UpstreamUnavailable(f"upstream {target.name!r} could not be reached") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, method: str, url: str, headers: list[tuple[bytes, bytes]], content: bytes | None,
                    extensions: dict) -> httpx.Response:
        if isinstance(self._transport, Http11Transport):
            # no httpx.Request: building one parses the URL and the headers again
            return await self._transport.send(method, url, headers, content, extensions)
        request = httpx.Request(method, url, headers=headers, content=content, extensions=extensions)
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response


def upstream_url(base_url: str, path: str, query: bytes) -> str:
    """The URL the upstream gets, as httpx writes it; BadPath when it would
    leave the base URL's path. Without a query (the common case) it is
    remembered: parsing a URL costs more than the rest of an upstream call's
    building, and a proxy sends the same few paths over and over. A query may
    carry a credential, so one is never kept."""
    if query:
        return _checked_url(base_url, path, query)
    return _checked_url_without_query(base_url, path)


def _checked_url(base_url: str, path: str, query: bytes) -> str:
    url = httpx.URL(base_url + path + ("?" + query.decode("latin-1") if query else ""))
    # httpx resolves dot segments when it parses a URL. check_path refuses them
    # at the door; this makes sure no path ever leaves the base URL's own.
    if url.path != unquote(_base_path(base_url) + path):
        raise BadPath("the request path does not stay under the upstream's base URL")
    return str(url)


@functools.lru_cache(maxsize=512)
def _checked_url_without_query(base_url: str, path: str) -> str:
    return _checked_url(base_url, path, b"")


@functools.lru_cache(maxsize=256)
def _base_path(base_url: str) -> str:
    return httpx.URL(base_url).raw_path.decode("ascii").rstrip("/")


class _ConnectionTrace:
    """httpcore's trace hook: whether this attempt opened a new connection."""

    __slots__ = ("fresh",)

    def __init__(self) -> None:
        self.fresh = False

    async def __call__(self, name: str, info: dict) -> None:
        if name.startswith("connection.connect_"):
            self.fresh = True


def _closed_before_answering(exc: httpx.HTTPError) -> bool:
    """The error of a connection the upstream closed before sending a response:
    a clean close (h11: "disconnected without sending a response") or a reset
    read. Either is raised before a response exists; an answer broken off
    later fails while it is relayed and is never retried."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending a response" in str(exc)
    return isinstance(exc, httpx.ReadError)


class RelayTap(Protocol):
    """Sees an answer as it is relayed: the cache records it, followers of a
    coalesced request receive it."""

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def chunk(self, data: bytes) -> None: ...

    async def end(self, error: Exception | None) -> None: ...


async def relay(response: httpx.Response, extra_headers: list[tuple[bytes, bytes]],
                stream_error_dialect: Dialect | None, record: RequestRecord | None = None,
                tap: RelayTap | None = None) -> Response:
    """The client's response to an upstream answer.

    `stream_error_dialect`: for chat routes, the dialect whose error event ends
    an SSE stream the upstream broke off. `record` learns of a broken stream,
    and says how many calls the answer took (retrying.attempts_header).
    """
    raw = response.headers.raw
    upstream_headers = response_headers(raw)
    if record is not None:
        extra_headers = extra_headers + attempts_header(record.attempts)
    length = first_value(raw, b"content-length")
    if length is not None and length.isdigit() and int(length) <= WHOLE_BODY_LIMIT:
        try:
            # the transport's stream itself: aiter_raw's bookkeeping is for
            # callers that read an answer more than once
            body = b"".join([chunk async for chunk in response.stream])
        except BaseException as exc:
            # Shielded: when the client went away this runs in a cancelled scope.
            with anyio.CancelScope(shield=True):
                await response.aclose()
            if not isinstance(exc, httpx.HTTPError):
                raise
            log.warning("upstream broke off its answer: %s", type(exc).__name__)
            error = UpstreamUnavailable("the upstream broke off its answer")
            if tap is not None:
                await tap.end(error)
            raise error from exc
        await response.aclose()
        if tap is not None:
            tap.start(response.status_code, upstream_headers)
            tap.chunk(body)
            await tap.end(None)
        relayed = Response(body, status_code=response.status_code)
        relayed.raw_headers += upstream_headers + extra_headers
        return relayed
    is_sse = (first_value(raw, b"content-type") or b"").startswith(b"text/event-stream")
    can_signal = is_sse and stream_error_dialect is not None and first_value(raw, b"content-encoding") is None
    if tap is not None:
        tap.start(response.status_code, upstream_headers)
    relayed = StreamingResponse(
        _relay_chunks(response, stream_error_dialect if can_signal else None, record, tap),
        status_code=response.status_code,
    )
    relayed.raw_headers = upstream_headers + extra_headers
    return relayed


async def _relay_chunks(response: httpx.Response, error_dialect: Dialect | None,
                        record: RequestRecord | None, tap: RelayTap | None) -> AsyncIterator[bytes]:
    error: Exception | None = CLIENT_GONE
    try:
        async for chunk in response.aiter_raw():
            if tap is not None:
                tap.chunk(chunk)
            yield chunk
        error = None
    except httpx.HTTPError as exc:
        log.warning("upstream broke off a stream (%s): %s", type(exc).__name__, record.path if record else "")
        error = UpstreamUnavailable("the upstream broke off the stream")
        if record is not None:
            record.error_kind = "broken_stream"
        if error_dialect is None:
            raise
        yield error_dialect.stream_error_event("the upstream broke off the stream")
    finally:
        # Shielded: on client disconnect this runs inside a cancelled scope, and
        # the upstream connection must still be closed.
        with anyio.CancelScope(shield=True):
            await response.aclose()
            if tap is not None:
                await tap.end(error)


# What a tap's followers learn when the leader's own client went away.
CLIENT_GONE = UpstreamUnavailable("the request that was fetching this answer was cancelled")
