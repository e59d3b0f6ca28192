"""The Starlette app: routes, the request's way through, and the lifespan that
owns the one shared upstream client."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import Config
from .errors import BadRequest, NotFound, PayloadTooLarge, ProxyError, error_response
from .routing import Router, chat_dialect, dialect_of
from .tokens import count_request_tokens
from .upstream import WHOLE_BODY_LIMIT, UpstreamClient, relay

log = logging.getLogger("ctxwarden")

TOKENS_BEFORE = b"x-ctxwarden-tokens-before"
TOKENS_AFTER = b"x-ctxwarden-tokens-after"


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat request and the bytes to send upstream for it."""

    dialect: str
    body: dict
    content: bytes
    tokens_before: int
    tokens_after: int


class Gateway:
    """Everything a request needs that is derived from one config."""

    def __init__(self, config: Config, client: UpstreamClient):
        self.config = config
        self.router = Router(config.upstreams)
        self.client = client

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if not path.startswith("/v1/"):
            raise NotFound(f"ctxwarden serves no path {path!r}; the provider APIs live under /v1/")
        dialect = chat_dialect(request.method, path)
        if dialect is not None:
            return await self.chat(request, dialect)
        return await self.forward(request, dialect_of(path, "anthropic-version" in request.headers))

    async def chat(self, request: Request, dialect: str) -> Response:
        started = time.perf_counter()
        raw = await read_body(request, self.config.server.max_body_bytes)
        chat = self.prepare_chat(dialect, raw)
        upstream = self.router.choose(dialect, chat.body["model"])
        response = await self.client.send(upstream, "POST", request.url.path, request.scope["query_string"],
                                          request.headers.raw, chat.content)
        extra = [(TOKENS_BEFORE, str(chat.tokens_before).encode()),
                 (TOKENS_AFTER, str(chat.tokens_after).encode())]
        log.debug("chat %s -> %s %d in %.1f ms", dialect, upstream.name, response.status_code,
                  (time.perf_counter() - started) * 1000)
        return await relay(response, extra, stream_error_dialect=dialect)

    def prepare_chat(self, dialect: str, raw: bytes) -> ChatRequest:
        body = parse_chat_body(raw)
        tokens = self.config.token_management
        tokens_before = count_request_tokens(body, dialect, tokens.encoding_for(body["model"]))
        return ChatRequest(dialect, body, raw, tokens_before, tokens_before)

    async def forward(self, request: Request, dialect: str) -> Response:
        upstream = self.router.choose(dialect, None)
        limit = self.config.server.max_body_bytes
        declared = _declared_length(request, limit)
        if declared is not None and declared <= WHOLE_BODY_LIMIT:
            content, streamed_length = (await request.body() if declared else None), None
        elif declared is None and "transfer-encoding" not in request.headers:
            content, streamed_length = None, None
        else:
            content, streamed_length = _limited(request.stream(), limit), declared
        response = await self.client.send(upstream, request.method, request.url.path,
                                          request.scope["query_string"], request.headers.raw,
                                          content, streamed_length)
        return await relay(response, [], stream_error_dialect=None)


def parse_chat_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
    return body


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


def _dialect_for_error(request: Request) -> str:
    return dialect_of(request.url.path, "anthropic-version" in request.headers)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc, _dialect_for_error(request))


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


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

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/_ctxwarden/health", _health, methods=["GET"]),
            Route("/{path:path}", proxied, methods=methods),
        ],
        exception_handlers={ProxyError: _proxy_error},
        lifespan=lifespan,
    )
