"""In-process response cache: cachetools.TTLCache (least recently used within the TTL).

* ``max_entries`` bounds the number of entries; ``max_bytes`` (optional) bounds
  the sum of ``len(key) + len(value)``; whichever is hit first evicts the least
  recently used live entry. A single value larger than ``max_bytes`` is not stored.
* ``ttl`` is the configured lifetime. ``set(..., ttl=x)`` may *shorten* it for one
  entry (the deadline is kept next to the value and checked on read); a longer
  per-entry ttl is capped at the configured one, since TTLCache has one TTL.
* Single event loop, no awaits inside: no locking needed.
"""

from __future__ import annotations

import time
from typing import Callable

from cachetools import TTLCache

__all__ = ["MemoryCache"]


class MemoryCache:
    name = "memory"

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        max_bytes: int | None = None,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_entries = max_entries
        self.ttl = float(ttl)
        self.max_bytes = max_bytes
        self._timer = timer
        # item: (value, deadline, len(key)); the key's length counts against max_bytes
        self._cache: TTLCache[str, tuple[bytes, float, int]]
        if max_bytes is None:
            self._cache = TTLCache(maxsize=max_entries, ttl=self.ttl, timer=timer)
        else:
            self._cache = TTLCache(
                maxsize=max_bytes,
                ttl=self.ttl,
                timer=timer,
                getsizeof=self._sizeof,
            )
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _sizeof(item: tuple[bytes, float, int]) -> int:
        return len(item[0]) + item[2]

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    @property
    def currsize_bytes(self) -> int:
        """Bytes held: sum of ``len(key) + len(value)`` over live entries."""
        self._cache.expire()
        return sum(len(v) + k for v, _, k in self._cache.values())

    async def get(self, key: str) -> bytes | None:
        item = self._cache.get(key)
        if item is None:
            self.misses += 1
            return None
        value, deadline, _ = item
        if deadline <= self._timer():
            self._cache.pop(key, None)
            self.misses += 1
            return None
        self.hits += 1
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        life = self.ttl if ttl is None else min(float(ttl), self.ttl)
        if life <= 0:
            self._cache.pop(key, None)
            return
        value = bytes(value)
        if self.max_bytes is not None and len(value) + len(key) > self.max_bytes:
            self._cache.pop(key, None)  # too big to keep; do not leave a stale one behind
            return
        item = (value, self._timer() + life, len(key))
        try:
            self._cache[key] = item
        except ValueError:  # larger than maxsize: not stored
            self._cache.pop(key, None)
            return
        while len(self._cache) > self.max_entries:
            self._cache.popitem()

    async def delete(self, key: str) -> None:
        self._cache.pop(key, None)

    async def close(self) -> None:
        self._cache.clear()
