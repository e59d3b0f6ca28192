"""A chat request, start to end.

parse → route → rewrite (with the conversation's state) → answer from the
cache, or follow an identical request already in flight (in this process,
then on another replica sharing the Redis cache), or send upstream and relay
the answer (recording it for the cache and for followers) → the
rewrite's headers on the response.  Each step is one call into the module
that does it; the gateway hands every chat request here.
"""

from __future__ import annotations

import time

import anyio
import httpx
from starlette.responses import Response

from .cache import Subscriber, credential_fingerprint
from .caching import CACHE_HEADER, OpenTap, follow, request_policy
from .chat import ChatRequest, manages, parse_chat_body, prepare_chat
from .config import Upstream
from .context import Context
from .dialects import Dialect
from .incoming import Incoming
from .observability.record import RequestRecord
from .outgoing import Slot, send
from .pipeline import conversation_keys
from .upstream import relay

# Bodies larger than this are parsed, counted, rewritten and keyed on a worker
# thread, so one huge request does not stall every other request on the event loop.
OFFLOAD_BODY_BYTES = 256 * 1024


async def chat(context: Context, request: Incoming, raw: bytes, dialect: Dialect, record: RequestRecord,
               opened: OpenTap, slot: Slot | None = None) -> Response:
    started = time.perf_counter()
    large = len(raw) > OFFLOAD_BODY_BYTES
    body = await _call(large, parse_chat_body, raw, dialect)
    record.model = body["model"]
    target = context.routes.route(dialect.upstream, body["model"])
    rewritten = await rewrite(context, request, raw, body, dialect, target.upstream)
    record.rewrite_seconds = time.perf_counter() - started
    record.rewrite, record.rewrite_reason = rewritten.rewrite, rewritten.reason
    record.tokens_before, record.tokens_after = rewritten.tokens_before, rewritten.tokens_after
    record.cost_sent, record.cost_passthrough = rewritten.cost_sent, rewritten.cost_passthrough
    headers = rewritten.headers()
    # the key hashes the body sent: on a worker thread too when that is large
    policy = await _call(len(rewritten.content) > OFFLOAD_BODY_BYTES, request_policy, context.config.cache,
                         target.name, request.path, rewritten.body, request.headers,
                         request.header(b"cache-control"), request.query)

    async def upstream() -> httpx.Response:
        return await send(context.client, record, target, request, rewritten.content, slot,
                          context.config.server.slot_timeout, context.routes.fallbacks(target, body["model"]))

    if policy.key is None:
        record.cache = "bypass"
        return await relay(await upstream(), headers + [(CACHE_HEADER, b"bypass")], dialect, record)
    hit = await context.cache.lookup(policy, dialect, headers)
    if hit is not None:
        record.cache = "hit"
        return hit
    entry = context.cache.join(policy)
    if isinstance(entry, Subscriber):
        record.cache = "hit"
        return await follow(entry, dialect, policy.stream, headers)
    tap = opened.open(context.cache, policy, dialect, entry)
    shared = await context.cache.across_replicas(tap, headers)
    if shared is not None:
        record.cache = "hit"
        return shared
    record.cache = "miss"
    try:
        response = await upstream()
    except BaseException as exc:
        await opened.fail(exc)
        raise
    return await relay(response, headers + [(CACHE_HEADER, b"miss")], dialect, record, tap)


async def rewrite(context: Context, request: Incoming, raw: bytes, body: dict, dialect: Dialect,
                  upstream: Upstream) -> ChatRequest:
    """The request to send, continuing the conversation's state from the cache
    backend (shared by replicas on Redis) and keeping the new state there."""
    tokens = context.config.token_management
    pricing = upstream.pricing_for(body["model"])
    large = len(raw) > OFFLOAD_BODY_BYTES
    if not manages(tokens, dialect.name, body, raw):
        return await _call(large, prepare_chat, tokens, dialect.name, raw, body, pricing)
    keys = await _call(large, conversation_keys, body, dialect.name)
    tenant = credential_fingerprint(request.headers, query=request.query)
    state = await context.cache.load_conversation(tenant, keys)
    chat = await _call(large, prepare_chat, tokens, dialect.name, raw, body, pricing, state, keys)
    if chat.state is not None and (state is None or chat.state.key != state.key):
        await context.cache.store_conversation(tenant, chat.state)
    return chat


async def _call(offload: bool, function, *args):
    return await anyio.to_thread.run_sync(function, *args) if offload else function(*args)
