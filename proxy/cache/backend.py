"""The one small interface every response-cache backend implements.

Values are opaque bytes (see :mod:`ctxwarden.cache.entry` for the stored answer
form). Backends never raise for a backend outage: a miss is ``None``, a failed
store is silently dropped (and counted by the backend). ``ttl`` is in seconds;
``None`` means the backend's configured default.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["CacheBackend"]


@runtime_checkable
class CacheBackend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...
