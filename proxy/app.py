"""The Starlette app: the route table, and the lifespan that owns the one
shared upstream client, the cache, the gate and the config reloader."""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import gc
import logging
import os
import sys
import time

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admin import AdminToken, admin_routes
from .caching import ResponseCache, make_backend
from .clientkeys import ClientKeyGuard, ClientKeySet, environment_issues, exposure_issues
from .config import Config, ConfigError, load_config
from .dialects import dialect_for
from .errors import ProxyError, error_response
from .gateway import Gateway
from .observability import Telemetry
from .observability.logs import configure_logging, reapply_logging
from .observability.shared import SharedDir
from .parallel.endpoint import serve_run
from .parallel.gate import UpstreamGate
from .reload import ConfigReloader, in_effect
from .tokens import get_encoding
from .upstream import UpstreamClient
from .workers import Listening

log = logging.getLogger("ctxwarden")


class Proxy:
    """The running proxy: the current Gateway (swapped on reload) and what
    outlives a reload (upstream connection pool, telemetry)."""

    def __init__(self, config: Config, config_path: str | None, last_good_path: str | None = None,
                 shared: SharedDir | None = None, listen_host: str | None = None,
                 listening: Listening | None = None):
        self.telemetry = Telemetry(shared)
        self.listening = listening
        # The address `serve` listens on: every config, reloads included, must be
        # allowed to serve there (clientkeys.exposure_issues). None: not known.
        self.listen_host = listen_host
        self.config_path = config_path
        self.last_good_path = last_good_path
        self.client: UpstreamClient | None = None
        self.cache: ResponseCache | None = None
        self.gate: UpstreamGate | None = None
        self.gateway: Gateway | None = None
        self.initial_config = config
        self.reloader: ConfigReloader | None = None
        # start-only settings the last reloaded file changes (reload.in_effect)
        self.restart_required: tuple[str, ...] = ()

    async def start(self) -> None:
        config = self.initial_config
        # Loading an encoding takes half a second to a second and a half: do it
        # before the first request, not during it.  A shipped encoding file
        # that fails its hash check stops the start here.
        for encoding in config.token_management.encodings():
            get_encoding(encoding)
        self.client = UpstreamClient(config.server)
        self.cache = ResponseCache(make_backend(config.cache), config.cache.ttl, config.cache.coalesce_wait)
        self.gate = UpstreamGate(config.server.max_connections, config.parallel_execution.resource_limit)
        self.telemetry.metrics.watch_gate(self.gate)
        self.telemetry.metrics.watch_cache_backend(self.cache.backend)
        if self.cache.replicas is not None:
            self.telemetry.metrics.watch_replica_coalescing(self.cache.replicas)
        self.gateway = Gateway.build(config, self.client, self.telemetry, self.cache, self.listen_host)
        if self.config_path is not None:
            self.reloader = ConfigReloader(self.config_path, self.apply, self.telemetry.metrics,
                                           config.server.reload_interval, self.last_good_path)

    async def close(self) -> None:
        assert self.client is not None and self.cache is not None
        await self.client.aclose()
        await self.cache.backend.close()
        self.telemetry.close()

    def apply(self, config: Config) -> None:
        """Make `config` the one new requests see; in-flight ones keep theirs,
        upstream URLs and keys included (a Gateway is never changed, only
        replaced). Raises ConfigError, changing nothing, when a key is unset."""
        assert self.client is not None and self.gate is not None
        config, restart_required = in_effect(self.initial_config, config)
        gateway = Gateway.build(config, self.client, self.telemetry, self.cache, self.listen_host)
        self.gate.reconfigure(config.server.max_connections, config.parallel_execution.resource_limit)
        self.gateway = gateway
        self.restart_required = restart_required
        if restart_required:
            log.warning("the reloaded file changes settings read only at start; they take effect on restart: %s",
                        ", ".join(restart_required))
        reapply_logging(config.logging)

    @property
    def config(self) -> Config:
        assert self.gateway is not None
        return self.gateway.config

    @property
    def client_keys(self) -> ClientKeySet:
        assert self.gateway is not None
        return self.gateway.client_keys

    def count_client_key_refusal(self, reason: str) -> None:
        self.telemetry.metrics.client_key_refusals.labels(reason).inc()


class ProxiedRequests:
    """The ASGI endpoint for everything proxied: an instance rather than a
    function so Starlette hands it the raw ASGI call, and the gateway can hold
    its upstream slot until the whole response (stream included) has been
    sent. The gateway is read once: a reload never changes a request midway."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self.proxy
        assert proxy.gateway is not None and proxy.gate is not None
        await proxy.gateway.serve(scope, receive, send, proxy.gate)


PROXIED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class ProxyApp(Starlette):
    """Starlette, with the common case taken straight to its endpoint: a
    request for a /v1/ path, which the router would match to the catch-all
    route after trying every other, goes to the client-key check and the
    gateway without the router and the exception layers around it (they cost
    more than the rest of the server side of a small request). The gateway
    answers proxy errors itself; anything else it raises reaches the server,
    which answers 500 as ServerErrorMiddleware would. A root_path, which the
    router strips before matching, takes the whole way."""

    proxied: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = _dated(send)
        if (self.proxied is not None and scope["type"] == "http" and scope["path"].startswith("/v1/")
                and not scope.get("root_path") and scope["method"] in PROXIED_METHODS):
            scope["app"] = self
            await self.proxied(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _dated(send: Send) -> Send:
    """`send`, with a Date field added to a response that has none: the
    proxy's own answers (errors, cache hits, its endpoints). A relayed answer
    keeps the upstream's, the only one: the server adds none (`serve` turns
    uvicorn's off), since RFC 9110 allows one Date field per message."""

    async def dated(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            if not any(name.lower() == b"date" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"date", http_date())]}
        await send(message)

    return dated


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """Now as an HTTP date, made at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc, dialect_for(request.url.path, request.headers))


GIL_SWITCH_SECONDS = 0.001    # Python's default is 0.005
GC_YOUNG_THRESHOLD = 10_000   # Python's default is 700


def create_app(config: Config, config_path: str | None = None, last_good_path: str | None = None,
               shared: SharedDir | None = None, listen_host: str | None = None,
               listening: Listening | None = None) -> Starlette:
    """The ASGI app. With `config_path`, the file is watched and reloaded; with
    `last_good_path`, every config applied is copied there; with `shared`, it
    is one of several workers and reports for all of them; with `listen_host`,
    a config (a reload's too) that may not serve on that address is refused;
    `listening`: where `serve` listens, for /_ctxwarden/config to show."""
    proxy = Proxy(config, config_path, last_good_path, shared, listen_host, listening)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # a big body is rewritten on a worker thread in pure Python, and the event
        # loop waits for the GIL up to the switch interval every time it needs it
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
        await proxy.start()
        # What start-up built (the app, the config, encodings, modules) lives as
        # long as the process: out of the collector's sight, a full collection
        # walks only what requests made since. Every request in flight stalls
        # while one runs: 0.6 ms rather than 12 (python bench/app_path.py --gc).
        gc.collect()
        gc.freeze()
        # A request leaves no reference cycles (test_reference_cycles), so a
        # young collection finds nothing to free. Yet with many requests in
        # flight their objects outnumber the default 700 over and over: at 50
        # clients, 470 collections a second, 6% of the CPU, each walking every
        # live young object. At 10,000 none ran in the same load.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        try:
            async with anyio.create_task_group() as tasks:
                if proxy.reloader is not None:
                    tasks.start_soon(proxy.reloader.run)
                if proxy.telemetry.shared_stats is not None:
                    tasks.start_soon(proxy.telemetry.share)
                try:
                    yield
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            # Outside the cancelled task group: closing the pool and the cache awaits.
            await proxy.close()

    async def parallel(request: Request) -> Response:
        assert proxy.gateway is not None and proxy.gate is not None
        return await serve_run(request, proxy.gateway, proxy.gate)

    proxied = ProxiedRequests(proxy)
    app = ProxyApp(
        routes=[
            *admin_routes(proxy),
            # Not an admin endpoint: apps call it with their own upstream credentials.
            Route("/_ctxwarden/parallel", parallel, methods=["POST"]),
            # Browsers ask for it on any page; answering here keeps it out of the stats.
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
            Route("/{path:path}", proxied, methods=list(PROXIED_METHODS)),
        ],
        middleware=[Middleware(AdminToken, proxy=proxy), Middleware(ClientKeyGuard, proxy=proxy)],
        exception_handlers={ProxyError: _proxy_error},
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    # the middleware a /v1/ path passes through on the router's way: AdminToken guards none
    app.proxied = ClientKeyGuard(proxied, proxy=proxy)
    return app


CONFIG_ENV = "CTXWARDEN_CONFIG"
LAST_GOOD_ENV = "CTXWARDEN_LAST_GOOD_CONFIG"
LOG_LEVEL_ENV = "CTXWARDEN_LOG_LEVEL"
LISTEN_HOST_ENV = "CTXWARDEN_LISTEN_HOST"
LISTEN_PORT_ENV = "CTXWARDEN_LISTEN_PORT"
WORKERS_ENV = "CTXWARDEN_WORKERS"


def create_app_from_environment() -> Starlette:
    """Factory for uvicorn worker processes (`serve` with workers > 1): the
    config file named by $CTXWARDEN_CONFIG, or the embedded default.

    uvicorn restarts every worker on SIGHUP; a worker that then finds the file
    bad starts with the last good copy instead (kept at $CTXWARDEN_LAST_GOOD_CONFIG
    by whoever last loaded the file successfully), so a bad reload never takes
    the proxy down."""
    path = os.environ.get(CONFIG_ENV) or None
    last_good = os.environ.get(LAST_GOOD_ENV) or None
    listen_host = os.environ.get(LISTEN_HOST_ENV) or None
    port, workers = os.environ.get(LISTEN_PORT_ENV, ""), os.environ.get(WORKERS_ENV, "")
    listening = (Listening(listen_host, int(port), int(workers))
                 if listen_host and port.isdigit() and workers.isdigit() else None)
    try:
        config = load_config(path)
        # What the worker's start would refuse (an unset key variable, an unguarded
        # upstream key) falls back to the last good copy too, rather than crash-looping.
        issues = environment_issues(config) + (exposure_issues(config, listen_host) if listen_host else [])
        if issues:
            raise ConfigError(issues)
    except ConfigError as exc:
        if last_good is None or not os.path.exists(last_good):
            raise
        config = dataclasses.replace(load_config(last_good), source=str(path))
        refused = str(exc)
    else:
        refused = None
    configure_logging(config.logging, os.environ.get(LOG_LEVEL_ENV) or None)
    if refused:
        log.error("config refused, starting with the last good config: %s", refused)
    return create_app(config, config_path=path, last_good_path=last_good, shared=SharedDir.from_environment(),
                      listen_host=listen_host, listening=listening)
