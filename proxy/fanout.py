"""Parallel runs: each task of a graph answered by the gateway (same rewrite
and cache as a single request) inside the fan-out share of the upstream pool.

Limits, besides the run's own ``max_tasks`` / ``max_workers`` / ``task_timeout``
and the pool share of :mod:`ctxwarden.gate`:

* **Per tenant.** A tenant is a credential fingerprint
  (:func:`ctxwarden.cache.credential_fingerprint` of the run's headers; callers
  that send no credential are one tenant). A tenant may have at most
  :data:`MAX_RUNS_PER_TENANT` runs at once; one more is refused with
  :class:`TooManyRuns` (429 in the dialect's error shape, ``Retry-After:``
  :data:`RETRY_AFTER_SECONDS`) before anything is sent. Over all its runs, a
  tenant has at most ``max_workers`` tasks in flight; further tasks wait for
  one of them (the wait counts in their ``task_timeout``).
* **Expanded body.** A task whose request, placeholders filled, would be
  larger than the server's ``max_body_bytes`` is not sent (see
  :func:`ctxwarden.parallel.run_task_graph`).
* **Answers.** Task answers are asked for with ``Accept-Encoding: gzip,
  deflate`` and decoded whatever their ``Content-Encoding``, at most
  :data:`ctxwarden.parallel.MAX_ANSWER_BYTES` decoded.
* **Client gone.** Given the request, a run whose client disconnects is
  cancelled: running calls are cancelled, no further task starts, and the
  route ends with :class:`ctxwarden.errors.ClientClosed` (499, logged at info).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .cache import credential_fingerprint
from .config import ParallelExecution
from .errors import ClientClosed, ProxyError
from .gate import UpstreamGate
from .gateway import Gateway
from .parallel import Task, TaskAnswer, TaskGraph, TaskResult, run_task_graph

log = logging.getLogger("ctxwarden.parallel")

DEFAULT_ANTHROPIC_VERSION = b"2023-06-01"

#: runs one tenant (credential fingerprint) may have at once; one more is a 429
MAX_RUNS_PER_TENANT = 4
#: the Retry-After of that 429, in seconds
RETRY_AFTER_SECONDS = 5
#: what tasks ask the upstream for: codings ctxwarden.parallel.decode_content undoes
TASK_ACCEPT_ENCODING = b"gzip, deflate"

# headers that described the run's own request body, not a task's
_BODY_HEADERS = frozenset({b"content-length", b"content-type", b"content-encoding",
                           b"transfer-encoding", b"accept-encoding", b"expect"})


class TooManyRuns(ProxyError):
    """The tenant already has MAX_RUNS_PER_TENANT runs going (-> 429 + Retry-After)."""

    status = 429
    openai_type = "requests"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = (("retry-after", str(retry_after)),)


def task_headers(headers: list[tuple[bytes, bytes]], dialect: str) -> list[tuple[bytes, bytes]]:
    """The run's headers for one task: the caller's credentials and provider
    headers, without those that described the run's own body, asking for an
    answer encoding the executor can decode."""
    kept = [(k, v) for k, v in headers if k.lower() not in _BODY_HEADERS]
    kept.append((b"content-type", b"application/json"))
    kept.append((b"accept-encoding", TASK_ACCEPT_ENCODING))
    if dialect == "anthropic" and not any(k.lower() == b"anthropic-version" for k, _ in kept):
        kept.append((b"anthropic-version", DEFAULT_ANTHROPIC_VERSION))
    return kept


# --------------------------------------------------------------------------- tenants


class _Tenant:
    __slots__ = ("runs", "tasks")

    def __init__(self, max_in_flight: int) -> None:
        self.runs = 0
        #: tasks in flight over all the tenant's runs
        self.tasks = asyncio.Semaphore(max_in_flight)


class TenantLimits:
    """Runs and tasks in flight per tenant, for one proxy (one upstream gate,
    one event loop). An entry lives while the tenant has a run going."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}

    def runs(self, tenant: str) -> int:
        t = self._tenants.get(tenant)
        return t.runs if t is not None else 0

    def __len__(self) -> int:
        return len(self._tenants)

    @contextlib.contextmanager
    def run(self, tenant: str, max_in_flight: int, max_runs: int | None = None) -> Iterator[_Tenant]:
        """Hold one of the tenant's run slots for the block; raise TooManyRuns
        when it has ``max_runs`` (default MAX_RUNS_PER_TENANT) already."""
        limit = MAX_RUNS_PER_TENANT if max_runs is None else max_runs
        entry = self._tenants.get(tenant)
        if entry is None:
            entry = self._tenants[tenant] = _Tenant(max_in_flight)
        if entry.runs >= limit:
            raise TooManyRuns(
                f"too many parallel runs at once for this credential: at most {limit} may run at the same "
                f"time; retry after {RETRY_AFTER_SECONDS} s")
        entry.runs += 1
        try:
            yield entry
        finally:
            entry.runs -= 1
            if entry.runs == 0 and self._tenants.get(tenant) is entry:
                del self._tenants[tenant]


# one TenantLimits per proxy: the gate is per proxy (and per event loop)
_LIMITS: "weakref.WeakKeyDictionary[UpstreamGate, TenantLimits]" = weakref.WeakKeyDictionary()


def tenant_limits(gate: UpstreamGate) -> TenantLimits:
    """The per-tenant limits that go with ``gate`` (created on first use)."""
    limits = _LIMITS.get(gate)
    if limits is None:
        limits = _LIMITS[gate] = TenantLimits()
    return limits


# --------------------------------------------------------------------------- client gone


async def wait_for_disconnect(receive: Callable[[], Any]) -> None:
    """Return once the ASGI server reports ``http.disconnect``. Call only after
    the request body has been read whole."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


# --------------------------------------------------------------------------- runs


async def run_parallel(gateway: Gateway, gate: UpstreamGate, graph: TaskGraph,
                       headers: list[tuple[bytes, bytes]], settings: ParallelExecution,
                       on_progress: Callable[[int, int, int], None] | None = None,
                       on_result: Callable[[TaskResult], None] | None = None, *,
                       request: Any = None) -> list[TaskResult]:
    """Run ``graph`` with the caller's ``headers``; return every task's result.

    Raises :class:`TooManyRuns` before anything is sent when the caller's tenant
    has too many runs going. With ``request`` (the Starlette request, its body
    already read), the run is cancelled when the client disconnects: running
    calls are cancelled, no further task starts, and
    :class:`ctxwarden.errors.ClientClosed` (499, sent to no one) is raised.
    """
    limits = tenant_limits(gate)
    tenant = credential_fingerprint(headers)
    with limits.run(tenant, settings.max_workers) as slot:
        gauge = gateway.telemetry.metrics.parallel_tasks

        async def run_one(task: Task, body: dict) -> TaskAnswer:
            async with slot.tasks, gate.fanout():
                gauge.inc()
                try:
                    status, content, answer_headers = await gateway.answer_task(
                        task.dialect, task.upstream_path, task_headers(headers, task.dialect), body)
                finally:
                    gauge.dec()
            return TaskAnswer.from_http(status, content, answer_headers)

        finished: dict[str, TaskResult] = {}

        def collect(result: TaskResult) -> None:
            finished[result.id] = result
            if on_result is not None:
                on_result(result)

        runner = run_task_graph(graph, run_one, max_workers=settings.max_workers,
                                task_timeout=settings.task_timeout, on_progress=on_progress,
                                on_result=collect,
                                max_body_bytes=gateway.config.server.max_body_bytes)
        if request is None:
            return await runner
        return await _until_disconnect(runner, request.receive, graph, finished)


async def _until_disconnect(runner, receive, graph: TaskGraph,
                            finished: dict[str, TaskResult]) -> list[TaskResult]:
    run = asyncio.ensure_future(runner)
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled ourselves (server shutting down)
        run.cancel()
        gone.cancel()
        await asyncio.gather(run, gone, return_exceptions=True)
        raise
    if not run.done():  # the client left first
        run.cancel()  # run_task_graph cancels its running calls and waits for them
        await asyncio.gather(run, return_exceptions=True)
    else:
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
    if not run.cancelled():
        return run.result()  # raises what the run raised
    log.info("parallel run: the client disconnected; %d of %d tasks were cancelled or never started",
             len(graph) - len(finished), len(graph))
    raise ClientClosed("the client closed the connection before its parallel run ended; its tasks were cancelled")
