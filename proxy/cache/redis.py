"""Redis response cache (``redis.asyncio``), shared by replicas.

A Redis outage never reaches the caller:

* ``get`` returns ``None`` and ``set``/``delete`` do nothing when Redis fails;
  every failed attempt adds one to ``failures`` (an int, for a metric).
* Each operation is bounded by ``timeout`` seconds (socket connect/read timeouts
  and an overall deadline), with at most one immediate reconnect-and-retry
  inside that deadline (a pooled connection that a restarted Redis closed).
* After a failure the backend stops trying for a backoff window (1 s, doubling
  up to 30 s); calls in the window return at once (counted in ``skipped``), so a
  dead Redis costs no latency per request. When the window ends, one call probes
  (others keep skipping until it answers); success closes the breaker and
  resets the backoff.
* Logging is rate-limited: one warning when Redis goes away, at most one more per
  minute while it stays away, one info line when it is back. The URL is logged
  with its password replaced by ``***`` and the password is scrubbed from error
  texts.

Keys are ``prefix + key``; values are stored with ``SET ... PX <ttl ms>``.

Three more operations, with the same bounds and breaker, serve the lock of
cross-replica coalescing (:mod:`ctxwarden.cache.distributed`): ``add`` (``SET
NX PX``), ``delete_if`` (delete only while the key still holds a given value,
one Lua script) and ``get_many`` (``MGET``: one atomic read of several keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = ["RedisCache", "redact_url"]

log = logging.getLogger("ctxwarden.cache.redis")

# Delete KEYS[1] only while it holds ARGV[1]: a lock is released by its owner only.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

T = TypeVar("T")

_LOG_EVERY = 60.0


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # user:password -> user:***; a lone userinfo may be a secret put in the wrong place -> ***
        netloc = f"{user}:***@{hostport}" if sep else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*", quote_via=quote)
    out = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and url.startswith(f"{parts.scheme}://") and not out.startswith(f"{parts.scheme}://"):
        out = f"{parts.scheme}://" + out[len(parts.scheme) + 1 :]  # keep unix:///path as written
    return out


def _secrets_of(url: str) -> list[str]:
    out: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            out.append(parts.password)
        elif parts.username:
            out.append(parts.username)
        for k, v in parse_qsl(parts.query):
            if k.lower() == "password" and v:
                out.append(v)
    except ValueError:
        pass
    return [s for s in out if s]


class RedisCache:
    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl: float,
        timeout: float = 0.5,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.prefix = prefix
        self.ttl = float(ttl)
        self.timeout = float(timeout)
        self.url = redact_url(url)
        self._secrets = _secrets_of(url)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=False,
        )
        self._delete_if = self._client.register_script(_DELETE_IF)
        #: failed attempts (timeouts, refused connections, server errors)
        self.failures = 0
        #: operations not attempted because the breaker was open
        self.skipped = 0
        self.hits = 0
        self.misses = 0
        self._backoff = self.backoff_initial
        self._down_until = 0.0  # 0: healthy
        self._probing = False
        self._last_log = float("-inf")
        self._closed = False

    # ------------------------------------------------------------------ state

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis recently failed)."""
        return self._down_until == 0.0

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _on_failure(self, op: str, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        was_up = self._down_until == 0.0
        if not was_up:
            self._backoff = min(self._backoff * 2, self.backoff_max)
        self._down_until = now + self._backoff
        reason = self._scrub(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
        if was_up or now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            log.warning(
                "redis cache at %s unavailable on %s (%s); serving uncached, next try in %.0f s (failures so far: %d)",
                self.url,
                op,
                reason,
                self._backoff,
                self.failures,
            )
        else:
            log.debug("redis cache at %s still unavailable on %s (%s)", self.url, op, reason)

    def _on_success(self) -> None:
        if self._down_until != 0.0:
            log.info("redis cache at %s is back; caching resumed (failures so far: %d)", self.url, self.failures)
            self._down_until = 0.0
            self._backoff = self.backoff_initial
            self._last_log = float("-inf")

    async def _run(self, op: str, fn: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        if self._closed:
            return False, None
        probing = False
        if self._down_until != 0.0:
            if self._probing or time.monotonic() < self._down_until:
                self.skipped += 1
                return False, None
            self._probing = probing = True
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn()
        except Exception as exc:  # CancelledError is a BaseException: it propagates
            self._on_failure(op, exc)
            return False, None
        finally:
            if probing:
                self._probing = False
        self._on_success()
        return True, result

    # ------------------------------------------------------------------ CacheBackend

    async def get(self, key: str) -> bytes | None:
        ok, value = await self._run("get", lambda: self._client.get(self.prefix + key))
        if ok and value is not None:
            self.hits += 1
            return bytes(value)
        self.misses += 1
        return None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        life = self.ttl if ttl is None else float(ttl)
        if life > 0:
            px = max(1, int(life * 1000))
            await self._run("set", lambda: self._client.set(self.prefix + key, value, px=px))
        else:
            await self._run("set", lambda: self._client.set(self.prefix + key, value))

    async def delete(self, key: str) -> None:
        await self._run("delete", lambda: self._client.delete(self.prefix + key))

    async def add(self, key: str, value: bytes, ttl: float) -> bool | None:
        """Set `key` only if it does not exist (``SET NX PX``): True when set,
        False when it exists, None when Redis failed or the breaker is open."""
        px = max(1, int(ttl * 1000))
        ok, done = await self._run("add", lambda: self._client.set(self.prefix + key, value, px=px, nx=True))
        return bool(done) if ok else None

    async def delete_if(self, key: str, value: bytes) -> bool:
        """Delete `key` if it still holds `value`; True when it was deleted."""
        ok, deleted = await self._run("delete_if", lambda: self._delete_if(keys=[self.prefix + key], args=[value]))
        return bool(ok and deleted)

    async def get_many(self, keys: list[str]) -> list[bytes | None] | None:
        """The values of `keys` read at one instant (``MGET``); None when Redis failed."""
        ok, values = await self._run("get_many", lambda: self._client.mget([self.prefix + k for k in keys]))
        if not ok or values is None:
            return None
        return [None if v is None else bytes(v) for v in values]

    async def ping(self) -> bool:
        """True when Redis answers now (subject to the breaker, like any call)."""
        ok, value = await self._run("ping", self._client.ping)
        return bool(ok and value)

    async def close(self) -> None:
        self._closed = True
        try:
            await self._client.aclose()
        except Exception:  # pragma: no cover - closing a dead connection
            pass

    def __repr__(self) -> str:
        return f"RedisCache({self.url!r}, prefix={self.prefix!r}, available={self.available})"
