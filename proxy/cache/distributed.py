"""Cross-replica coalescing: identical requests arriving at different replicas
at once make one upstream call, through a short lock on the shared Redis.

    replicas = ReplicaCoalescing(redis_cache, wait=30.0)
    joined = await replicas.join(key)      # key: the response cache key
    if isinstance(joined, Lease):          # we lead: call upstream, store the answer,
        ...                                # then `await joined.release()` (stored or not)
    elif joined is not None:               # bytes: the answer the leader stored
        ...                                # (CachedAnswer.to_bytes form), served as a hit
    else:                                  # None: call upstream ourselves, no lock
        ...

Protocol, on the cache's own Redis and under its key prefix:

* The lock is ``lock:<key>``, set with ``SET NX PX <wait>`` to a random token.
  The response key already covers the caller's credential fingerprint, so
  tenants never share a lock, let alone an answer.
* The first replica to set it leads. It looks the answer up once more (a
  leader that finished between our cache lookup and our lock has stored it:
  it is served, not fetched again), calls upstream, stores the answer as any
  miss does, and then releases the lock: deleted only while it still holds
  the leader's token (one Lua script), so a lock that expired and was taken
  by another replica is never deleted by the old leader.
* A replica that finds the lock held polls ``MGET lock, key`` (one atomic
  read) every 20 ms doubling to 250 ms, at most ``wait`` seconds: the answer
  there -> served; the lock gone without an answer -> the leader failed or its
  answer is not stored (error status, too large, a stream not recorded whole)
  -> fall back; the wait over, or Redis failing -> fall back. Because the
  leader stores before it releases, "lock gone, no answer" is its failure
  notice; no pub/sub connection or listener task is needed.
* A fallback calls upstream itself, without the lock. Redis down (the
  backend's breaker open, or the ``SET`` failing) means no lock and no wait at
  all: the request goes upstream as if there were one replica.
* The lock lives at most ``wait`` seconds: a leader slower than that no
  longer holds back anyone, and the next arrival leads a call of its own.

Only the process's in-process leader comes here (its own followers wait on
it in memory, :mod:`ctxwarden.cache.coalesce`), so one replica polls once per
key however many identical requests it holds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Protocol

__all__ = ["FALLBACK_REASONS", "Lease", "ReplicaCoalescing"]

#: Why a follower stopped waiting and called upstream itself (a metric label).
FALLBACK_REASONS = ("leader_failed", "expired", "redis")

FIRST_POLL = 0.02
MAX_POLL = 0.25


class LockStore(Protocol):
    """What this module needs of the Redis backend (:class:`ctxwarden.cache.redis.RedisCache`)."""

    async def get(self, key: str) -> bytes | None: ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool | None: ...

    async def delete_if(self, key: str, value: bytes) -> bool: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None] | None: ...


def lock_key(key: str) -> str:
    return "lock:" + key


class Lease:
    """The leader's hold on a key's lock; release it once the answer is stored or failed."""

    def __init__(self, store: LockStore, key: str, token: bytes) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.store.delete_if(lock_key(self.key), self.token)


class ReplicaCoalescing:
    def __init__(self, store: LockStore, wait: float, *, first_poll: float = FIRST_POLL,
                 max_poll: float = MAX_POLL) -> None:
        if wait <= 0:
            raise ValueError("wait must be positive")
        self.store = store
        self.wait = float(wait)
        self.first_poll = first_poll
        self.max_poll = max_poll
        #: requests served the answer another replica's leader stored
        self.coalesced = 0
        #: followers that called upstream themselves, by reason
        self.fallbacks = dict.fromkeys(FALLBACK_REASONS, 0)

    async def join(self, key: str) -> Lease | bytes | None:
        """Lead (a Lease), or the leader's stored answer (bytes), or None: call
        upstream without the lock."""
        token = secrets.token_hex(16).encode()
        taken = await self.store.add(lock_key(key), token, self.wait)
        if taken is None:
            return None  # Redis unavailable: no lock, no wait
        if taken:
            lease = Lease(self.store, key, token)
            stored = await self.store.get(key)
            if stored is None:
                return lease
            await lease.release()
            self.coalesced += 1
            return stored
        answer, reason = await self._wait(key)
        if answer is None:
            self.fallbacks[reason] += 1
            return None
        self.coalesced += 1
        return answer

    async def _wait(self, key: str) -> tuple[bytes | None, str]:
        """The leader's answer, or None and why there is none."""
        deadline = time.monotonic() + self.wait
        pause = self.first_poll
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, "expired"
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, self.max_poll)
            found = await self.store.get_many([lock_key(key), key])
            if found is None:
                return None, "redis"
            held, answer = found
            if answer is not None:
                return answer, ""
            if held is None:
                return None, "leader_failed"
