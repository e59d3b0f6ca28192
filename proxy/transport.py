"""The upstream connection pool: aiohttp's connector under httpx's transport
interface, so the rest of the proxy (and its tests) speak httpx.

Why hand-written: httpx's own pool (httpcore, pure Python) costs four to five
times the CPU per request of aiohttp's C-accelerated client
(``python bench/client_overhead.py``), and it was most of the proxy's time per
request.  The published adapter (httpx-aiohttp 0.2) reports a connection the
upstream closed as a connect timeout and lets aiohttp add ``User-Agent`` and
``Accept-Encoding`` to every request; a proxy must send the client's headers
as they are and tell a closed connection from a slow one, so this adapter is
ours.

What it keeps of httpx's transport contract: the request's ``timeout``
extension (connect, read, pool; aiohttp has no write timeout), the ``trace``
extension's ``connection.connect_tcp.complete`` event when a new connection
is opened (the client's one retry depends on it), httpx's exception types,
and the raw body, never decompressed.  Its own extension ``ca_bundle`` names
the PEM file an upstream's certificate is verified against.

Egress like other HTTP tools when ``trust_env``: HTTPS_PROXY / HTTP_PROXY /
NO_PROXY (aiohttp's reading of them, ~/.netrc for a proxy's credentials),
and SSL_CERT_FILE / SSL_CERT_DIR in place of certifi's CAs.  They are read
once per upstream scheme and host, not per request: aiohttp's own
``trust_env`` reads them (and ~/.netrc, twice) on a worker thread for every
request, two thread hand-offs that cost more than the rest of the call.
~/.netrc is read for the forward proxy's credentials only: an upstream gets
the client's credentials or the configured key, never a netrc entry (with
``trust_env`` on the session aiohttp would add one as Basic auth, and refuse
a request that carries its own Authorization).
"""

from __future__ import annotations

import contextvars
import functools
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anyio
import certifi
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from multidict import CIMultiDict
from yarl import URL

# aiohttp adds these unless told not to; the client's own pass through as they came.
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


# The calling request's httpx `trace` extension, for the connector to report a new connection to.
_TRACE: contextvars.ContextVar[Callable[[str, dict], Awaitable[None]] | None] = contextvars.ContextVar(
    "ctxwarden_upstream_trace", default=None)


class _Connector(aiohttp.TCPConnector):
    """Reports each connection it opens to the request it opens it for.

    Rather than an aiohttp TraceConfig: with one, aiohttp builds trace objects
    and sends its signals for every step of every request, a tenth of its
    time per call, to learn of the one event that matters here.
    (_create_connection: the connector's step that opens a connection when
    none is pooled, unchanged since aiohttp 3.0.)"""

    async def _create_connection(self, req: aiohttp.ClientRequest, traces: list,
                                 timeout: aiohttp.ClientTimeout) -> ResponseHandler:
        connection = await super()._create_connection(req, traces, timeout)
        trace = _TRACE.get()
        if trace is not None:
            await trace("connection.connect_tcp.complete", {})
        return connection


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits, trust_env: bool = True) -> None:
        self._limits = limits
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        # (scheme, host) -> the forward proxy from the environment and its credentials
        self._proxies: dict[tuple[str, str | None], tuple[URL | None, BasicAuth | None]] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        connector = _Connector(
            limit=self._limits.max_connections or 0, limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0,
            ssl=_default_context(self._trust_env))
        return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     skip_auto_headers=_NO_AUTO_HEADERS, cookie_jar=aiohttp.DummyCookieJar())

    async def _proxy_for(self, url: URL) -> tuple[URL | None, BasicAuth | None]:
        if not self._trust_env:
            return None, None
        key = (url.scheme, url.host)
        found = self._proxies.get(key)
        if found is None:
            # aiohttp's reading of the environment; it may read ~/.netrc, so not on the event loop
            found = self._proxies[key] = await anyio.to_thread.run_sync(_environment_proxy, url)
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.send(request.method, str(request.url), request.headers.raw, request.content or None,
                                   request.extensions)
        response.request = request
        return response

    async def send(self, method: str, url: str, headers: list[tuple[bytes, bytes]], content: bytes | None,
                   extensions: dict) -> httpx.Response:
        """handle_async_request without an httpx.Request: what the proxy's own
        client calls (building a Request parses the URL and the headers once
        more); `extensions` as a Request's. The response has no `request`."""
        if self._session is None:
            self._session = self._open()
        timeout = extensions.get("timeout", {})
        ca_bundle = extensions.get("ca_bundle")
        target = URL(url)
        tracing = _TRACE.set(extensions.get("trace"))
        try:
            proxy, proxy_auth = await self._proxy_for(target)
            response = await self._session.request(
                method, target, headers=_headers(headers), proxy=proxy, proxy_auth=proxy_auth,
                data=content or None, allow_redirects=False, timeout=_timeout(**timeout),
                **({"ssl": _bundle_context(ca_bundle)} if ca_bundle else {}))
        except Exception as exc:
            raise _as_httpx(exc) from exc
        finally:
            _TRACE.reset(tracing)
        return httpx.Response(
            response.status, headers=list(response.raw_headers), stream=_Body(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1")})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@functools.lru_cache(maxsize=64)
def _timeout(connect: float | None = None, read: float | None = None, write: float | None = None,
             pool: float | None = None) -> aiohttp.ClientTimeout:
    # aiohttp has no write timeout; connect is the wait for a pooled connection and the connecting
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read,
                                 connect=None if connect is None or pool is None else connect + pool)


def _environment_proxy(url: URL) -> tuple[URL | None, BasicAuth | None]:
    try:
        return get_env_proxy_for_url(url)
    except LookupError:   # NO_PROXY names the host, or no proxy for its scheme
        return None, None


def _default_context(trust_env: bool) -> ssl.SSLContext:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if trust_env and (cafile or capath):
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


@functools.lru_cache(maxsize=64)
def _bundle_context(path: str) -> ssl.SSLContext:
    # one context per file: building one reads and parses the whole bundle
    return ssl.create_default_context(cafile=path)


def _headers(raw: list[tuple[bytes, bytes]]) -> CIMultiDict:
    return CIMultiDict((_text(k), _text(v)) for k, v in raw)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Body(httpx.AsyncByteStream):
    """The answer's bytes as they arrive (a stream's events are not held back)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except Exception as exc:
            # aiohttp raises a broken-off body's error before the bytes that
            # arrived with it; the client gets those first, as httpx gave them.
            # (_buffer: StreamReader's received, unread chunks, unchanged since aiohttp 3.0.)
            for chunk in _unread(content):
                yield chunk
            raise _as_httpx(exc) from exc

    async def aclose(self) -> None:
        # A body read to its end returns the connection to the pool; one broken
        # off closes it (aiohttp decides, from what was read).
        self._response.release()


def _unread(content: aiohttp.StreamReader) -> list[bytes]:
    buffered = getattr(content, "_buffer", None)
    if not buffered:
        return []
    chunks = [bytes(chunk) for chunk in buffered]
    buffered.clear()
    return chunks


def _as_httpx(exc: Exception) -> Exception:
    """The httpx exception a caller of an httpx transport expects for an aiohttp one."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, TimeoutError):
        return httpx.PoolTimeout(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # the wording httpx (h11) uses, which UpstreamClient's retry rule reads
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientPayloadError, ConnectionError)):
        return httpx.ReadError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.RemoteProtocolError(message)
    return exc
