"""Response cache: keys, backends (memory, Redis), stored answers, SSE record/replay, coalescing.

The Redis backend lives in :mod:`ctxwarden.cache.redis` and is imported only when
configured (the ``redis`` package is an optional dependency).
"""

from ctxwarden.cache.backend import CacheBackend
from ctxwarden.cache.coalesce import (
    Broadcast,
    FollowerTooSlow,
    InFlight,
    Subscriber,
)
from ctxwarden.cache.entry import MAX_ANSWER_BYTES, CachedAnswer
from ctxwarden.cache.keys import (
    accepted_encodings,
    answer_headers,
    conversation_store_key,
    credential_fingerprint,
    is_cacheable_request,
    response_cache_key,
)
from ctxwarden.cache.memory import MemoryCache
from ctxwarden.cache.sse import StreamRecorder, replay_sse

__all__ = [
    "MAX_ANSWER_BYTES",
    "Broadcast",
    "CacheBackend",
    "CachedAnswer",
    "FollowerTooSlow",
    "InFlight",
    "MemoryCache",
    "StreamRecorder",
    "Subscriber",
    "accepted_encodings",
    "answer_headers",
    "conversation_store_key",
    "credential_fingerprint",
    "is_cacheable_request",
    "replay_sse",
    "response_cache_key",
]
