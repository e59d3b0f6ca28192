"""A proxied request's way through: read, rewrite (chat routes), forward, relay."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import Response

from .chat import prepare_chat
from .config import Config
from .errors import NotFound, PayloadTooLarge
from .routing import Router, chat_dialect, dialect_of
from .upstream import WHOLE_BODY_LIMIT, UpstreamClient, relay

log = logging.getLogger("ctxwarden")

# Bodies this large are counted and rewritten on a worker thread, so one huge
# request does not stall every other request on the event loop.
OFFLOAD_BODY_BYTES = 256 * 1024


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
        if len(raw) > OFFLOAD_BODY_BYTES:
            chat = await anyio.to_thread.run_sync(prepare_chat, self.config.token_management, dialect, raw)
        else:
            chat = prepare_chat(self.config.token_management, dialect, raw)
        upstream = self.router.choose(dialect, chat.body["model"])
        response = await self.client.send(upstream, "POST", request.url.path, request.scope["query_string"],
                                          request.headers.raw, chat.content)
        log.debug("chat %s -> %s %d in %.1f ms", dialect, upstream.name, response.status_code,
                  (time.perf_counter() - started) * 1000)
        return await relay(response, chat.headers(), stream_error_dialect=dialect)

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
