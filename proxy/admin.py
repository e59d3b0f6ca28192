"""The proxy's own endpoints (health, readiness, config, stats, dashboard,
explain, metrics) and the admin token that guards them.

The token is checked by one middleware for every path under /_ctxwarden/ and
/metrics, except the probes (they reveal no more than up/down and why the
last reload was refused) and the parallel endpoint (apps call it with their
own upstream credentials).  It is read from the current config on every
request, so a reload that sets or rotates it applies at once.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import os
from typing import Protocol

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .chat import explain_request
from .config import Config, package_file
from .dialects import DEFAULT, DIALECTS, dialect_for, dialect_of_body
from .errors import BadRequest, Unauthorized, error_response
from .incoming import read_body
from .observability import Telemetry
from .reload import ConfigReloader
from .upstream import UpstreamClient
from .wirejson import parse_json
from .workers import Listening

log = logging.getLogger("ctxwarden")

class Proxy(Protocol):
    """What the admin endpoints read of the running proxy (app.Proxy): the config in effect, its
    parts, and the settings a reloaded file changed that take effect on restart."""

    @property
    def config(self) -> Config: ...

    client: UpstreamClient | None
    telemetry: Telemetry
    reloader: ConfigReloader | None
    restart_required: tuple[str, ...]
    listening: Listening | None


OPEN_PATHS = frozenset({"/_ctxwarden/health", "/_ctxwarden/ready", "/_ctxwarden/parallel"})
TOKEN_HEADER = "x-ctxwarden-admin-token"


def guarded(path: str) -> bool:
    return (path == "/metrics" or path.startswith("/_ctxwarden/")) and path not in OPEN_PATHS


class AdminToken:
    """ASGI middleware: a guarded path needs the admin token (``x-ctxwarden-admin-token``,
    ``Authorization: Bearer``, or ``?token=``) when ``admin/@token_env`` names a set variable."""

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and guarded(scope["path"]):
            request = Request(scope)
            env = self.proxy.config.admin.token_env
            expected = os.environ.get(env) if env else None
            if expected and not hmac.compare_digest(_given_token(request).encode(), expected.encode()):
                error = Unauthorized("this admin endpoint needs the ctxwarden admin token")
                log.info("%s %s -> %d: %s", request.method, request.url.path, error.status, error.message)
                await error_response(error, dialect_for(request.url.path, request.headers))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def unset_token_warning(config: Config) -> str | None:
    """Why the admin endpoints are open although the config names a token:
    its variable is unset or empty (a warning, not a refusal: the probes and
    a loopback-only proxy may want them open)."""
    env = config.admin.token_env
    if env is None or os.environ.get(env):
        return None
    return (f"<admin token_env> names {env}, which is not set: the admin endpoints (config, stats, dashboard, "
            f"explain, metrics) are open to anyone who reaches the port")


def _given_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
    return request.headers.get(TOKEN_HEADER) or bearer or request.query_params.get("token", "")


@functools.cache
def dashboard_page() -> bytes:
    """The dashboard: one self-contained page (inline CSS and JS, no CDN)."""
    return package_file("dashboard.html")


def admin_routes(proxy: Proxy) -> list[Route]:
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
        listening = dataclasses.asdict(proxy.listening) if proxy.listening is not None else None
        return JSONResponse({**proxy.config.describe(), "restart_required": list(proxy.restart_required),
                             "listening": listening})

    async def metrics(request: Request) -> Response:
        return Response(proxy.telemetry.metrics.render(), media_type=proxy.telemetry.metrics.content_type)

    async def stats(request: Request) -> Response:
        return JSONResponse(proxy.telemetry.stats_snapshot())

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(dashboard_page())

    async def explain(request: Request) -> Response:
        requested = _requested_dialect(request)
        server = proxy.config.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout)

        def report() -> dict:
            return explain_request(proxy.config, requested or _dialect_of(raw), raw)

        return JSONResponse(await anyio.to_thread.run_sync(report))

    return [
        Route("/_ctxwarden/health", health, methods=["GET"]),
        Route("/_ctxwarden/ready", ready, methods=["GET"]),
        Route("/_ctxwarden/config", effective_config, methods=["GET"]),
        Route("/_ctxwarden/stats", stats, methods=["GET"]),
        Route("/_ctxwarden/dashboard", dashboard, methods=["GET"]),
        Route("/_ctxwarden/explain", explain, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _requested_dialect(request: Request) -> str | None:
    """The dialect ?dialect= or an SDK's header names, if any."""
    requested = request.query_params.get("dialect")
    if requested is None:
        told = next((d for d in DIALECTS.values() if d.recognises(request.headers)), None)
        return None if told is None else told.name
    if requested not in DIALECTS:
        raise BadRequest(f"dialect must be one of {', '.join(map(repr, DIALECTS))}")
    return requested


def _dialect_of(raw: bytes) -> str:
    """The body's dialect from its shape, as `ctxwarden explain` tells it; a body
    that shows none is read as the default dialect's, one that shows two is refused."""
    body = parse_json(raw)
    if isinstance(body, dict) and not any(d.body_signs(body) for d in DIALECTS.values()):
        return DEFAULT.name
    return dialect_of_body(body).name
