"""The Starlette app: routes, admin endpoints, and the lifespan that owns the
one shared upstream client and the config reloader."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import logging
import os

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .caching import ResponseCache, make_backend
from .chat import explain_request
from .config import Config, ConfigError, load_config, package_file
from .dialects import DIALECTS, Dialect, dialect_for
from .errors import BadRequest, ProxyError, Unauthorized, error_response
from .gateway import Gateway
from .incoming import read_body
from .observability import Telemetry
from .observability.logs import configure_logging, reapply_logging
from .parallel.endpoint import run_parallel
from .parallel.gate import UpstreamGate
from .parallel.graph import parse_task_graph
from .parallel.results import summarize
from .wirejson import parse_json
from .reload import ConfigReloader
from .tokens import get_encoding
from .upstream import UpstreamClient

log = logging.getLogger("ctxwarden")


@functools.cache
def dashboard_page() -> bytes:
    """The dashboard: one self-contained page (inline CSS and JS, no CDN)."""
    return package_file("dashboard.html")


# Probes must work without the admin token; they reveal no more than up/down
# and the reason the last reload was refused.
OPEN_ADMIN_PATHS = frozenset({"/_ctxwarden/health", "/_ctxwarden/ready"})


class Proxy:
    """The running proxy: the current Gateway (swapped on reload) and what
    outlives a reload (upstream connection pool, telemetry)."""

    def __init__(self, config: Config, config_path: str | None, last_good_path: str | None = None):
        self.telemetry = Telemetry()
        self.config_path = config_path
        self.last_good_path = last_good_path
        self.client: UpstreamClient | None = None
        self.cache: ResponseCache | None = None
        self.gate: UpstreamGate | None = None
        self.gateway: Gateway | None = None
        self.initial_config = config
        self.reloader: ConfigReloader | None = None

    async def start(self) -> None:
        config = self.initial_config
        # Loading an encoding takes about half a second: do it before the
        # first request, not during it.
        for encoding in {config.token_management.default_encoding,
                         *(m.encoding for m in config.token_management.models if m.encoding)}:
            get_encoding(encoding)
        self.client = UpstreamClient(config.server)
        self.cache = ResponseCache(make_backend(config.cache), config.cache.ttl)
        self.gate = UpstreamGate(config.server.max_connections, config.parallel_execution.resource_limit)
        self.telemetry.metrics.watch_gate(self.gate)
        self.telemetry.metrics.watch_cache_backend(self.cache.backend)
        self.gateway = Gateway(config, self.client, self.telemetry, self.cache)
        if self.config_path is not None:
            self.reloader = ConfigReloader(self.config_path, self.apply, self.telemetry.metrics,
                                           config.server.reload_interval, self.last_good_path)

    async def close(self) -> None:
        assert self.client is not None and self.cache is not None
        await self.client.aclose()
        await self.cache.backend.close()

    def apply(self, config: Config) -> None:
        """Make `config` the one new requests see; in-flight ones keep theirs,
        upstream URLs and keys included (a Gateway is never changed, only
        replaced). Raises ConfigError, changing nothing, when a key is unset."""
        assert self.client is not None and self.gate is not None
        gateway = Gateway(config, self.client, self.telemetry, self.cache)
        self.gate.reconfigure(self.initial_config.server.max_connections, config.parallel_execution.resource_limit)
        self.gateway = gateway
        reapply_logging(config.logging)

    @property
    def config(self) -> Config:
        assert self.gateway is not None
        return self.gateway.config

    def check_admin(self, request: Request) -> None:
        env = self.config.admin.token_env
        expected = os.environ.get(env) if env else None
        if not expected or request.url.path in OPEN_ADMIN_PATHS:
            return
        given = request.headers.get("x-ctxwarden-admin-token") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        given = given or request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("this admin endpoint needs the ctxwarden admin token")


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


def _dialect_for_error(request: Request) -> Dialect:
    return dialect_for(request.url.path, request.headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc, _dialect_for_error(request))


def _explain_dialect(request: Request) -> str:
    requested = request.query_params.get("dialect")
    if requested is None:
        return dialect_for(request.url.path, request.headers).name
    if requested not in DIALECTS:
        raise BadRequest(f"dialect must be one of {', '.join(map(repr, DIALECTS))}")
    return requested


def create_app(config: Config, config_path: str | None = None, last_good_path: str | None = None) -> Starlette:
    """The ASGI app. With `config_path`, the file is watched and reloaded; with
    `last_good_path`, every config applied is copied there."""
    proxy = Proxy(config, config_path, last_good_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await proxy.start()
        async with anyio.create_task_group() as tasks:
            if proxy.reloader is not None:
                tasks.start_soon(proxy.reloader.run)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                await proxy.close()


    def admin(endpoint):
        async def guarded(request: Request) -> Response:
            proxy.check_admin(request)
            return await endpoint(request)
        return guarded

    async def health(request: Request) -> Response:
        body = {"status": "ok", "config": proxy.config.source}
        if proxy.reloader is not None and proxy.reloader.last_error:
            body["last_reload_error"] = proxy.reloader.last_error
        return JSONResponse(body)

    async def ready(request: Request) -> Response:
        assert proxy.client is not None
        problems = await proxy.client.unreachable([u for u in proxy.config.upstreams if u.check_ready])
        if problems:
            return JSONResponse({"status": "not ready", "unreachable": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def effective_config(request: Request) -> Response:
        return JSONResponse(proxy.config.describe())

    async def metrics(request: Request) -> Response:
        return Response(proxy.telemetry.metrics.render(), media_type=proxy.telemetry.metrics.content_type)

    async def stats(request: Request) -> Response:
        return JSONResponse(proxy.telemetry.stats.snapshot())

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(dashboard_page())

    async def parallel(request: Request) -> Response:
        assert proxy.gateway is not None and proxy.gate is not None
        gateway = proxy.gateway
        server = gateway.config.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout)
        try:
            graph = parse_task_graph(parse_json(raw), gateway.config.parallel_execution.max_tasks)
        except ValueError as exc:
            raise BadRequest(getattr(exc, "message", f"request body is not valid JSON: {exc}")) from exc
        results = await run_parallel(gateway, proxy.gate, graph, request.headers.raw,
                                     gateway.config.parallel_execution, request=request)
        return JSONResponse({"tasks": [r.to_dict() for r in results], "summary": summarize(results)})

    async def explain_endpoint(request: Request) -> Response:
        dialect = _explain_dialect(request)
        server = proxy.config.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout)
        report = await anyio.to_thread.run_sync(explain_request, proxy.config, dialect, raw)
        return JSONResponse(report)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/_ctxwarden/health", admin(health), methods=["GET"]),
            Route("/_ctxwarden/ready", admin(ready), methods=["GET"]),
            Route("/_ctxwarden/config", admin(effective_config), methods=["GET"]),
            Route("/_ctxwarden/stats", admin(stats), methods=["GET"]),
            Route("/_ctxwarden/dashboard", admin(dashboard), methods=["GET"]),
            Route("/_ctxwarden/explain", admin(explain_endpoint), methods=["POST"]),
            # Not an admin endpoint: apps call it with their own upstream credentials.
            Route("/_ctxwarden/parallel", parallel, methods=["POST"]),
            Route("/metrics", admin(metrics), methods=["GET"]),
            # Browsers ask for it on any page; answering here keeps it out of the stats.
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
            Route("/{path:path}", ProxiedRequests(proxy), methods=methods),
        ],
        exception_handlers={ProxyError: _proxy_error},
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    return app


CONFIG_ENV = "CTXWARDEN_CONFIG"
LAST_GOOD_ENV = "CTXWARDEN_LAST_GOOD_CONFIG"
LOG_LEVEL_ENV = "CTXWARDEN_LOG_LEVEL"


def create_app_from_environment() -> Starlette:
    """Factory for uvicorn worker processes (`serve` with workers > 1): the
    config file named by $CTXWARDEN_CONFIG, or the embedded default.

    uvicorn restarts every worker on SIGHUP; a worker that then finds the file
    bad starts with the last good copy instead (kept at $CTXWARDEN_LAST_GOOD_CONFIG
    by whoever last loaded the file successfully), so a bad reload never takes
    the proxy down."""
    path = os.environ.get(CONFIG_ENV) or None
    last_good = os.environ.get(LAST_GOOD_ENV) or None
    try:
        config = load_config(path)
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
    return create_app(config, config_path=path, last_good_path=last_good)
