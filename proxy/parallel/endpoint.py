"""A parallel run for a caller: each task of its graph answered by the gateway
(same rewrite and cache as a single request) inside the caller's tenant limits
(:mod:`.tenants`) and the fan-out share of the upstream pool (:mod:`.gate`).

Task answers are asked for with ``Accept-Encoding: gzip, deflate`` and decoded
whatever their ``Content-Encoding``, at most
:data:`.answers.MAX_ANSWER_BYTES` decoded. Given the request, a run whose
client disconnects is cancelled: running calls are cancelled, no further task
starts, and the route ends with :class:`ctxwarden.errors.ClientClosed` (499,
logged at info).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..cache import credential_fingerprint
from ..config import ParallelExecution
from ..dialects import get_dialect
from ..errors import ClientClosed
from ..incoming import ClientWatch, read_body, until_disconnected
from ..wirejson import parse_json
from .answers import TaskAnswer
from .executor import ProgressCallback, run_task_graph
from .gate import UpstreamGate
from .graph import Task, TaskGraph, parse_task_graph
from .results import TaskResult, summarize
from .tenants import tenant_limits

if TYPE_CHECKING:  # the gateway imports the gate from this package
    from ..gateway import Gateway

log = logging.getLogger("ctxwarden.parallel")

#: what tasks ask the upstream for: codings answers.decode_content undoes
TASK_ACCEPT_ENCODING = b"gzip, deflate"

# headers that described the run's own request body, not a task's
_BODY_HEADERS = frozenset({b"content-length", b"content-type", b"content-encoding",
                           b"transfer-encoding", b"accept-encoding", b"expect"})


def task_headers(headers: list[tuple[bytes, bytes]], dialect: str) -> list[tuple[bytes, bytes]]:
    """The run's headers for one task: the caller's credentials and provider
    headers, without those that described the run's own body, asking for an
    answer encoding the executor can decode."""
    kept = [(k, v) for k, v in headers if k.lower() not in _BODY_HEADERS]
    kept.append((b"content-type", b"application/json"))
    kept.append((b"accept-encoding", TASK_ACCEPT_ENCODING))
    present = {k.lower() for k, _ in kept}
    kept.extend((k, v) for k, v in get_dialect(dialect).required_headers if k not in present)
    return kept


async def run_parallel(gateway: Gateway, gate: UpstreamGate, graph: TaskGraph,
                       headers: list[tuple[bytes, bytes]], settings: ParallelExecution,
                       on_progress: ProgressCallback | None = None, *,
                       request: Request | None = None) -> list[TaskResult]:
    """Run ``graph`` with the caller's ``headers``; return every task's result.

    Raises :class:`.tenants.TooManyRuns` before anything is sent when the
    caller's tenant has too many runs going. With ``request`` (the Starlette
    request, its body already read), the run is cancelled when the client
    disconnects: running calls are cancelled, no further task starts, and
    :class:`ctxwarden.errors.ClientClosed` (499, sent to no one) is raised.
    """
    with tenant_limits(gate).run(credential_fingerprint(headers), settings.max_workers) as tenant:
        gauge = gateway.telemetry.metrics.parallel_tasks

        async def run_one(task: Task, body: dict[str, Any]) -> TaskAnswer:
            async with tenant.tasks, gate.fanout():
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

        runner = run_task_graph(graph, run_one, max_workers=settings.max_workers,
                                task_timeout=settings.task_timeout, on_progress=on_progress, on_result=collect,
                                max_body_bytes=gateway.config.server.max_body_bytes)
        if request is None:
            return await runner
        watch = ClientWatch(request.receive)
        watch.start()
        try:
            return await until_disconnected(watch, lambda: runner)
        except ClientClosed:
            log.info("parallel run: the client disconnected; %d of %d tasks were cancelled or never started",
                     len(graph) - len(finished), len(graph))
            raise ClientClosed("the client closed the connection before its parallel run ended; "
                               "its tasks were cancelled") from None
        finally:
            watch.close()


async def serve_run(request: Request, gateway: Gateway, gate: UpstreamGate) -> Response:
    """POST /_ctxwarden/parallel: the body is a task graph; the answer, every task's result and a summary."""
    server = gateway.config.server
    raw = await read_body(request, server.max_body_bytes, server.body_timeout)
    graph = parse_task_graph(parse_json(raw), gateway.config.parallel_execution.max_tasks)
    results = await run_parallel(gateway, gate, graph, request.headers.raw, gateway.config.parallel_execution,
                                 request=request)
    return JSONResponse({"tasks": [r.to_dict() for r in results], "summary": summarize(results)})
