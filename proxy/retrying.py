"""Retries and fallbacks of one upstream call.

The policy is pure: which failures count (an upstream's `<retry on>`), how
long to wait before the next try (the upstream's own `Retry-After` /
`retry-after-ms`, else exponential backoff with jitter), and when to stop.
`call_with_retries` is the one loop that applies it, for chat requests and
every other /v1/ path alike (outgoing.send).

Everything is decided on the status line and headers, before any byte of the
answer has reached the client: a 200 stream that breaks off later is never
retried. A failed answer is read (bounded) and closed before the next try;
the last failure, answer or error, is what the client gets. The request's
bytes are the same on every try. Waiting happens inside the request's work,
so a client that goes away cancels it like the call itself (incoming.until_disconnected).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from .config import RetrySettings
from .errors import UpstreamError, UpstreamTimeout
from .observability.record import RequestRecord
from .routing import Target

log = logging.getLogger("ctxwarden.upstream")

#: on a response that took more than one try: how many upstream calls it took
ATTEMPTS_HEADER = b"x-ctxwarden-attempts"
# The most of a failed answer read before the next try: read whole, its
# connection goes back to the pool; a bigger one is closed instead.
DISCARD_LIMIT = 64 * 1024
# A computed backoff is shortened by up to this share, at random, so that
# clients failed by one outage do not all come back at the same instant.
JITTER = 0.25


@dataclass(frozen=True)
class Pacing:
    """Time as the loop sees it; tests hand in their own, so none of them sleeps."""

    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    # the wall clock, which an HTTP-date Retry-After is relative to
    now: Callable[[], float] = time.time
    random: Callable[[], float] = random.random


SYSTEM_PACING = Pacing()


def asked_delay(headers: httpx.Headers, now: float) -> float | None:
    """The seconds the upstream asks to wait before the next try, or None when
    it says nothing readable: `retry-after-ms` (both providers send it, both
    SDKs prefer it), else `Retry-After` as seconds or an HTTP date. A time
    already past is 0."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(0.0, milliseconds / 1000)
    value = headers.get("retry-after")
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:   # "-0000": a date in UTC, its zone not said
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # an overflowing number ("1e999") asks for longer than any cap: kept, as infinity
    return None if math.isnan(number) else number


def upstream_allows(headers: httpx.Headers) -> bool:
    """False when the upstream says this request is not worth repeating
    (`x-should-retry: false`, which both providers send and both SDKs obey)."""
    return headers.get("x-should-retry", "").strip().lower() != "false"


def backoff_delay(retry: RetrySettings, number: int, draw: float) -> float:
    """The wait before retry `number` (from 1) when the upstream named none:
    backoff x 2^(number-1), at most max_backoff, less up to JITTER of it
    (`draw` is uniform in [0, 1))."""
    return min(retry.backoff * 2 ** (number - 1), retry.max_backoff) * (1 - JITTER * draw)


def next_delay(retry: RetrySettings, number: int, asked: float | None, draw: float) -> float | None:
    """The wait before retry `number` (from 1), or None when there is none:
    the attempts are used up, or the upstream asked for longer than
    max_backoff (its answer then stands, or a fallback takes over)."""
    if number > retry.attempts:
        return None
    if asked is not None:
        return asked if asked <= retry.max_backoff else None
    return backoff_delay(retry, number, draw)


def wait_before_retry(retry: RetrySettings, number: int, headers: httpx.Headers | None, now: float,
                      draw: float) -> float | None:
    """The wait before retry `number` (from 1) of a call that failed with an
    answer carrying `headers` (None: no answer, the connection failed), or
    None when it is not to be repeated."""
    if headers is None:
        return next_delay(retry, number, None, draw)
    if not upstream_allows(headers):
        return None
    return next_delay(retry, number, asked_delay(headers, now), draw)


def error_reason(exc: UpstreamError) -> str:
    """What a failed call is retried as: "timeout" when the upstream took too
    long to answer a request it had received, else "connect" (refused, reset
    or closed before answering, or no connection within connect_timeout:
    nothing reached the upstream, or nothing came back)."""
    if isinstance(exc, UpstreamTimeout) and not isinstance(exc.__cause__, httpx.ConnectTimeout):
        return "timeout"
    return "connect"


Outcome = httpx.Response | UpstreamError


async def call_with_retries(targets: Sequence[Target], call: Callable[[Target], Awaitable[httpx.Response]],
                            record: RequestRecord, pacing: Pacing = SYSTEM_PACING) -> httpx.Response:
    """The first answer not to retry, its body not yet read. Each target (the
    routed upstream, then its fallbacks) gets up to 1 + its attempts calls
    while it fails as its `<retry on>` says; then the next takes over. When
    all failed, the last failure: its answer, or its error raised. The record
    learns every call, retry and fallback, and which upstream answered."""
    for index, target in enumerate(targets):
        retry = target.upstream.retry
        number = 0
        while True:
            record.upstream = target.name
            record.attempts += 1
            outcome = await _attempt(call, target)
            reason = error_reason(outcome) if isinstance(outcome, UpstreamError) else str(outcome.status_code)
            if not retry.covers(reason):
                return _settled(outcome)
            number += 1
            headers = None if isinstance(outcome, UpstreamError) else outcome.headers
            delay = wait_before_retry(retry, number, headers, pacing.now(), pacing.random())
            if delay is not None:
                await _drop(outcome)
                log.info("upstream %s failed (%s) on %s %s; retry %d of %d in %.3g s", target.name, reason,
                         record.method, record.path, number, retry.attempts, delay)
                record.retries.append((target.name, reason))
                await pacing.sleep(delay)
                continue
            if index + 1 == len(targets):
                return _settled(outcome)
            await _drop(outcome)
            following = targets[index + 1].name
            log.info("upstream %s failed (%s) on %s %s; falling back to %s", target.name, reason,
                     record.method, record.path, following)
            record.fallbacks.append((target.name, following))
            break
    raise AssertionError("no upstream to call")  # pragma: no cover - targets is never empty


async def _attempt(call: Callable[[Target], Awaitable[httpx.Response]], target: Target) -> Outcome:
    try:
        return await call(target)
    except UpstreamError as exc:
        return exc


async def _drop(outcome: Outcome) -> None:
    if isinstance(outcome, httpx.Response):
        await discard(outcome)


def _settled(outcome: Outcome) -> httpx.Response:
    if isinstance(outcome, UpstreamError):
        raise outcome
    return outcome


async def discard(response: httpx.Response, limit: int = DISCARD_LIMIT) -> None:
    """Read at most `limit` bytes of a failed answer, then close it."""
    read = 0
    try:
        async with contextlib.aclosing(response.aiter_raw()) as chunks:
            async for chunk in chunks:
                read += len(chunk)
                if read > limit:
                    break
    except httpx.HTTPError:
        pass   # the answer is dropped anyway; closing it is what matters
    finally:
        # Shielded: the client may have gone away while this read.
        with anyio.CancelScope(shield=True):
            await response.aclose()


def attempts_header(attempts: int) -> list[tuple[bytes, bytes]]:
    """The response header saying how many calls an answer took, when more than one."""
    return [(ATTEMPTS_HEADER, str(attempts).encode())] if attempts > 1 else []
