"""Response cache: keys, backends (memory, Redis), stored answers, SSE record/replay, coalescing.

The Redis backend lives in :mod:`proxy.cache.redis` and is imported only when
configured (the ``redis`` package is an optional dependency).
"""

from proxy.cache.backend import CacheBackend
from proxy.cache.coalesce import (
    Broadcast,
    FollowerTooSlow,
    InFlight,
    LeaderCancelled,
    Subscriber,
)
from proxy.cache.entry import MAX_ANSWER_BYTES, CachedAnswer
from proxy.cache.keys import (
    accepted_encodings,
    answer_headers,
    conversation_store_key,
    credential_fingerprint,
    is_cacheable_request,
    response_cache_key,
)
from proxy.cache.memory import MemoryCache
from proxy.cache.sse import StreamRecorder, replay_sse

__all__ = [
    "MAX_ANSWER_BYTES",
    "Broadcast",
    "CacheBackend",
    "CachedAnswer",
    "FollowerTooSlow",
    "InFlight",
    "LeaderCancelled",
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
