"""The upstream connection pool under httpx's transport interface, so the rest
of the proxy (and its tests, with respx) speak httpx.

Why hand-written: the client is most of a proxy's own work per request.
httpx's pool (httpcore, pure Python) cost four to five times the CPU per call
of aiohttp's, and aiohttp's session, used here before, still cost 170 to 290
µs per call for machinery a proxy does not use: cookies, redirects,
decompression, tracing, a timer rescheduled on every chunk
(`python bench/client_overhead.py` prints all of them side by side). This
pool writes each request in one piece and parses the answer with httptools
(llhttp, uvicorn's parser) in http11.py. The published httpx adapter over
aiohttp (httpx-aiohttp) reports a closed connection as a connect timeout and
adds `User-Agent` and `Accept-Encoding` to every request; a proxy must send
the client's headers as they are.

What it keeps of httpx's transport contract: the request's ``timeout``
extension (connect, read, write: the socket taking none of a request left
in the buffer for that long, pool), the ``trace`` extension's
``connection.connect_tcp.complete`` event when a new connection is opened (the
client's one retry depends on it), httpx's exception types, and the raw body,
never decompressed. Its own extension ``ca_bundle`` names the PEM file an
upstream's certificate is verified against.

Egress like other HTTP tools when ``trust_env``: HTTP_PROXY / HTTPS_PROXY /
ALL_PROXY and NO_PROXY as urllib reads them, an http:// forward proxy's
credentials from its URL or ~/.netrc (never an upstream's: it gets the
client's credentials or the configured key), a CONNECT tunnel for https://
upstreams; and SSL_CERT_FILE / SSL_CERT_DIR in place of certifi's CAs. They
are read once per upstream scheme and host, not per request.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import netrc
import os
import ssl
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import anyio
import certifi
import httpx

from .http11 import Connection

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods whose request has a body even when it is empty: they say so with Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Not yet looked up (None: no forward proxy).
_UNREAD = object()


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a URL's request goes: `authority` is its Host header, `target` its request line's."""

    scheme: str
    host: str
    port: int
    authority: str
    target: str


@functools.lru_cache(maxsize=1024)
def origin_of(url: str) -> Origin:
    """A proxy sends the same few URLs over and over: each is parsed once."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"the upstream URL must be http:// or https:// with a host: {url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise httpx.UnsupportedProtocol(f"the upstream URL's port is not a number: {url!r}") from exc
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    return Origin(scheme, parts.hostname, port, parts.netloc.rpartition("@")[2], target)


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    host: str
    port: int
    authorization: bytes | None  # the Proxy-Authorization value


def forward_proxy_for(scheme: str, host: str) -> ForwardProxy | None:
    """The forward proxy the environment names for this upstream, as curl and
    urllib read it. It may read ~/.netrc: not on the event loop."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"only http:// forward proxies are supported, not {parts.scheme}://")
    login, password = parts.username, parts.password
    if login is None:
        login, password = _netrc_login(parts.hostname)
    authorization = None
    if login is not None:
        token = f"{unquote(login)}:{unquote(password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(token)
    return ForwardProxy(parts.hostname, parts.port or 80, authorization)


def _netrc_login(host: str) -> tuple[str | None, str | None]:
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None, None
    return (found[0], found[2]) if found else (None, None)


class _Pool:
    """Connections by where they lead, the most recently used first. At most
    `limit` open at once (0: no limit); at most `idle_limit` kept idle, each
    for `keepalive` seconds."""

    def __init__(self, limit: int, idle_limit: int | None, keepalive: float) -> None:
        self._limit, self._idle_limit, self._keepalive = limit, idle_limit, keepalive
        self._idle: dict[tuple, list[Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, key: tuple, timeout: float | None) -> Connection | None:
        """An idle connection to `key`, or None with room counted for a new
        one; waits at most `timeout` while the pool is full."""
        deadline = None
        while True:
            connection = self.take_idle(key)
            if connection is not None:
                return connection
            if not self._limit or self._open < self._limit:
                self._open += 1
                return None
            if self._idle_count:   # idle ones to other upstreams make room
                self._close_oldest_idle()
                continue
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = None if timeout is None else loop.time() + timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection became free in time") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def take_idle(self, key: tuple) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if not connection.closed and connection.loop.time() - connection.idle_since < self._keepalive:
                return connection
            self.discard(connection)
        return None

    def opened(self, connection: Connection) -> None:
        connection.on_lost = self._lost

    def give_back(self, key: tuple, connection: Connection) -> None:
        if not connection.reusable or (self._idle_limit is not None and self._idle_count >= self._idle_limit):
            self.discard(connection)
            return
        connection.idle_since = connection.loop.time()
        self._idle.setdefault(key, []).append(connection)
        self._idle_count += 1
        self._wake_one()

    def discard(self, connection: Connection) -> None:
        connection.close()
        if connection.on_lost is not None:
            self._lost(connection)

    def failed_to_open(self) -> None:
        self._open -= 1
        self._wake_one()

    def _lost(self, connection: Connection) -> None:
        # counted once, whichever comes first: the upstream closing it or the proxy
        if connection.on_lost is None:
            return
        connection.on_lost = None
        self._open -= 1
        for idle in self._idle.values():
            if connection in idle:
                idle.remove(connection)
                self._idle_count -= 1
                break
        self._wake_one()

    def _close_oldest_idle(self) -> None:
        key = min((k for k, idle in self._idle.items() if idle), key=lambda k: self._idle[k][0].idle_since)
        self.discard(self._idle[key][0])

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for connection in list(idle):
                self.discard(connection)


class Http11Transport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits, trust_env: bool = True) -> None:
        self._pool = _Pool(limits.max_connections or 0, limits.max_keepalive_connections,
                           limits.keepalive_expiry if limits.keepalive_expiry is not None else 5.0)
        self._trust_env = trust_env
        self._tls = _default_context(trust_env)
        # (scheme, host) -> the forward proxy from the environment, or None
        self._proxies: dict[tuple[str, str], ForwardProxy | None] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.send(request.method, str(request.url), request.headers.raw,
                                   await request.aread() or None, request.extensions)
        response.request = request
        return response

    async def send(self, method: str, url: str, headers: list[tuple[bytes, bytes]], content: bytes | None,
                   extensions: dict) -> httpx.Response:
        """handle_async_request without an httpx.Request: what the proxy's own
        client calls (building a Request parses the URL and the headers once
        more); `extensions` as a Request's. The response has no `request`.
        `headers` go out as they are, but for Host and Content-Length, which
        are written for the URL and the body."""
        timeout = extensions.get("timeout", {})
        origin = origin_of(url)
        proxy = self._proxies.get((origin.scheme, origin.host), _UNREAD) if self._trust_env else None
        if proxy is _UNREAD:
            proxy = await self._read_proxy(origin)
        key = (origin.scheme, origin.host, origin.port, proxy, extensions.get("ca_bundle"))
        # an idle connection without a coroutine on the way: the common case
        connection = self._pool.take_idle(key) or await self._pool.acquire(key, timeout.get("pool"))
        if connection is None:
            connection = await self._open(origin, proxy, timeout, extensions.get("ca_bundle"))
            trace = extensions.get("trace")
            if trace is not None:
                await trace("connection.connect_tcp.complete", {})
        in_the_clear = proxy is not None and origin.scheme == "http"
        head = request_head(method, url if in_the_clear else origin.target, origin.authority, headers,
                            content, proxy.authorization if in_the_clear else None)
        try:
            connection.send_request(head, content, head_only=method == "HEAD")
            await connection.request_written(timeout.get("write"))
            status, reason, raw_headers = await connection.response_head(timeout.get("read"))
        except BaseException:
            self._pool.discard(connection)
            raise
        return httpx.Response(status, headers=raw_headers, stream=_Body(self._pool, key, connection, timeout),
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    async def _read_proxy(self, origin: Origin) -> ForwardProxy | None:
        key = (origin.scheme, origin.host)
        self._proxies[key] = await anyio.to_thread.run_sync(forward_proxy_for, *key)
        return self._proxies[key]

    async def _open(self, origin: Origin, proxy: ForwardProxy | None, timeout: dict,
                    ca_bundle: str | None) -> Connection:
        loop = asyncio.get_running_loop()
        tls = (_bundle_context(ca_bundle) if ca_bundle else self._tls) if origin.scheme == "https" else None
        connection: Connection | None = None
        try:
            async with asyncio.timeout(timeout.get("connect")):
                if proxy is None:
                    _, connection = await loop.create_connection(
                        lambda: Connection(loop), origin.host, origin.port, ssl=tls,
                        server_hostname=origin.host if tls else None)
                else:
                    _, connection = await loop.create_connection(lambda: Connection(loop), proxy.host, proxy.port)
                    if tls is not None:
                        await _tunnel(connection, origin, proxy, tls)
        except BaseException as exc:
            if connection is not None:
                connection.close()
            self._pool.failed_to_open()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"could not connect to {origin.authority} in time") from None
            if isinstance(exc, OSError):   # ssl.SSLError included
                raise httpx.ConnectError(f"could not connect to {origin.authority}: {exc}") from exc
            raise
        self._pool.opened(connection)
        return connection

    async def aclose(self) -> None:
        self._pool.close_all()


async def _tunnel(connection: Connection, origin: Origin, proxy: ForwardProxy, tls: ssl.SSLContext) -> None:
    """A CONNECT tunnel through the forward proxy, then TLS to the upstream inside it."""
    authority = f"{origin.host}:{origin.port}" if ":" not in origin.host else f"[{origin.host}]:{origin.port}"
    lines = [b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (authority.encode(), authority.encode())]
    if proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: " + proxy.authorization + b"\r\n")
    connection.send_request(b"".join(lines) + b"\r\n", None, head_only=True)
    status, _, _ = await connection.response_head(None)   # the connect timeout bounds it
    if not 200 <= status < 300:
        raise httpx.ProxyError(f"the forward proxy refused a tunnel to {authority}: HTTP {status}")
    assert connection.transport is not None
    connection.upgraded(await connection.loop.start_tls(
        connection.transport, connection, tls, server_hostname=origin.host))


def request_head(method: str, target: str, authority: str, headers: list[tuple[bytes, bytes]],
                 content: bytes | None, proxy_authorization: bytes | None) -> bytes:
    """The request's head as it goes on the wire. LocalProtocolError when a
    header would break the framing: a line break in a name or value would
    smuggle a header (or a request) of the caller's choosing past the proxy."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if proxy_authorization is not None:
        lines.append(b"Proxy-Authorization: " + proxy_authorization + b"\r\n")
    if content or method in _BODY_METHODS:
        lines.append(b"Content-Length: %d\r\n" % len(content or b""))
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != head.count(b"\n"):
        raise httpx.LocalProtocolError("a request header holds a line break")
    return head


class _Body(httpx.AsyncByteStream):
    """The answer's bytes as they arrive; the connection goes back to the pool
    once they are read to the end, and is closed when the reader stops short."""

    def __init__(self, pool: _Pool, key: tuple, connection: Connection, timeout: dict) -> None:
        self._pool, self._key, self._connection = pool, key, connection
        self._read_timeout = timeout.get("read")
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection, timeout = self._connection, self._read_timeout
        while (chunk := await connection.receive(timeout)) is not None:
            yield chunk

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.give_back(self._key, self._connection)


def _default_context(trust_env: bool) -> ssl.SSLContext:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if trust_env and (cafile or capath):
        return _http11_context(ssl.create_default_context(cafile=cafile, capath=capath))
    return _http11_context(ssl.create_default_context(cafile=certifi.where()))


@functools.lru_cache(maxsize=64)
def _bundle_context(path: str) -> ssl.SSLContext:
    # one context per file: building one reads and parses the whole bundle
    return _http11_context(ssl.create_default_context(cafile=path))


def _http11_context(context: ssl.SSLContext) -> ssl.SSLContext:
    context.set_alpn_protocols(["http/1.1"])
    return context
