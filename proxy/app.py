"""The Starlette app: routes, error mapping, and the lifespan that owns the one
shared upstream client."""

from __future__ import annotations

import contextlib
import logging

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .chat import explain_request
from .config import Config
from .errors import BadRequest, ProxyError, error_response
from .gateway import Gateway, read_body
from .routing import dialect_of
from .upstream import UpstreamClient

log = logging.getLogger("ctxwarden")


def _dialect_for_error(request: Request) -> str:
    return dialect_of(request.url.path, "anthropic-version" in request.headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc, _dialect_for_error(request))


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _explain_dialect(request: Request) -> str:
    requested = request.query_params.get("dialect")
    if requested in ("openai", "anthropic"):
        return requested
    if requested is not None:
        raise BadRequest("dialect must be 'openai' or 'anthropic'")
    return "anthropic" if "anthropic-version" in request.headers else "openai"


def create_app(config: Config) -> Starlette:
    state: dict[str, Gateway] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        client = UpstreamClient(config.server, config.upstreams)
        state["gateway"] = Gateway(config, client)
        try:
            yield
        finally:
            await client.aclose()

    async def proxied(request: Request) -> Response:
        return await state["gateway"].handle(request)

    async def explain_endpoint(request: Request) -> Response:
        gateway = state["gateway"]
        dialect = _explain_dialect(request)
        raw = await read_body(request, gateway.config.server.max_body_bytes)
        return JSONResponse(await anyio.to_thread.run_sync(explain_request, gateway.config.token_management, dialect, raw))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/_ctxwarden/health", _health, methods=["GET"]),
            Route("/_ctxwarden/explain", explain_endpoint, methods=["POST"]),
            Route("/{path:path}", proxied, methods=methods),
        ],
        exception_handlers={ProxyError: _proxy_error},
        lifespan=lifespan,
    )
