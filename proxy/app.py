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

import anyio

from .config import Config, TokenManagement
from .errors import BadRequest, NotFound, PayloadTooLarge, ProxyError, error_response
from .pipeline import RewritePlan, explain, rewrite_request
from .pipeline.rollout import conversation_bucket
from .routing import Router, chat_dialect, dialect_of
from .tokens import count_request_tokens
from .upstream import WHOLE_BODY_LIMIT, UpstreamClient, relay

log = logging.getLogger("ctxwarden")

TOKENS_BEFORE = b"x-ctxwarden-tokens-before"
TOKENS_AFTER = b"x-ctxwarden-tokens-after"
REWRITE = b"x-ctxwarden-rewrite"
SHADOW_TOKENS_AFTER = b"x-ctxwarden-shadow-tokens-after"
WARNING = b"x-ctxwarden-warning"
# Bodies this large are counted and rewritten on a worker thread, so one huge
# request does not stall every other request on the event loop.
OFFLOAD_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat request, the bytes to send upstream for it, and what the
    rewrite did (`rewrite`: enforced, shadow, unchanged, off, excluded, failed)."""

    dialect: str
    body: dict
    content: bytes
    tokens_before: int
    tokens_after: int
    rewrite: str
    shadow_tokens_after: int | None = None
    warning: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(TOKENS_BEFORE, str(self.tokens_before).encode()),
                   (TOKENS_AFTER, str(self.tokens_after).encode()),
                   (REWRITE, self.rewrite.encode())]
        if self.shadow_tokens_after is not None:
            headers.append((SHADOW_TOKENS_AFTER, str(self.shadow_tokens_after).encode()))
        if self.warning:
            headers.append((WARNING, self.warning.encode("ascii", "replace")))
        return headers


def rewrite_plan(tokens: TokenManagement, body: dict) -> RewritePlan:
    """The plan for one request: the config's, with the budget capped by the
    model's context window less the output it asks for, where both are known."""
    model = body["model"]
    budget = tokens.budget
    window = tokens.context_window_for(model)
    if window:
        output = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if isinstance(output, int) and not isinstance(output, bool):
            budget = max(1, min(budget, window - output))
    return RewritePlan(
        budget=budget, compression_threshold=tokens.compression_threshold,
        pruning_distance=tokens.pruning_distance, tier_shares=tokens.tier_shares,
        critical_overflow=tokens.critical_overflow, encoding=tokens.encoding_for(model),
    )


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
            chat = await anyio.to_thread.run_sync(self.prepare_chat, dialect, raw)
        else:
            chat = self.prepare_chat(dialect, raw)
        upstream = self.router.choose(dialect, chat.body["model"])
        response = await self.client.send(upstream, "POST", request.url.path, request.scope["query_string"],
                                          request.headers.raw, chat.content)
        log.debug("chat %s -> %s %d in %.1f ms", dialect, upstream.name, response.status_code,
                  (time.perf_counter() - started) * 1000)
        return await relay(response, chat.headers(), stream_error_dialect=dialect)

    def prepare_chat(self, dialect: str, raw: bytes) -> ChatRequest:
        body = parse_chat_body(raw)
        tokens = self.config.token_management
        plan = rewrite_plan(tokens, body)
        if tokens.rewrite_mode == "off" or (
                tokens.rollout_percent < 100 and conversation_bucket(body, dialect) >= tokens.rollout_percent):
            count = count_request_tokens(body, dialect, plan.encoding)
            return ChatRequest(dialect, body, raw, count, count,
                               "off" if tokens.rewrite_mode == "off" else "excluded")
        try:
            outcome = rewrite_request(body, dialect, plan)
        except Exception:
            # The rewrite must never cost the client its request.
            log.exception("rewrite failed; sending the request unchanged")
            count = count_request_tokens(body, dialect, plan.encoding)
            return ChatRequest(dialect, body, raw, count, count, "failed",
                               warning="rewrite failed; request sent unchanged")
        before = outcome.tokens_before
        if outcome.warning:
            log.warning("rewrite passed the request through: %s", outcome.warning)
        if tokens.rewrite_mode == "shadow":
            return ChatRequest(dialect, body, raw, before, before, "shadow",
                               shadow_tokens_after=outcome.tokens_after, warning=outcome.refused or outcome.warning)
        if outcome.refused:
            raise BadRequest(outcome.refused)
        if not outcome.changed:
            return ChatRequest(dialect, body, raw, before, before, "unchanged", warning=outcome.warning)
        content = json.dumps(outcome.body, ensure_ascii=False, separators=(",", ":")).encode()
        return ChatRequest(dialect, outcome.body, content, before, outcome.tokens_after, "enforced")

    def explain(self, dialect: str, raw: bytes) -> dict:
        body = parse_chat_body(raw)
        return explain(body, dialect, rewrite_plan(self.config.token_management, body))

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
        return JSONResponse(await anyio.to_thread.run_sync(gateway.explain, dialect, raw))

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
