"""Running a task graph: each task as soon as its dependencies ended ``ok``.

Tasks run on one anyio task group, at most ``max_workers`` at once (a
``CapacityLimiter``, whose waiters are served first come first served, so ready
tasks start in input order). ``graphlib`` tracks which tasks became ready as
others finish. A task's time, and its ``task_timeout``, include any wait for an
upstream slot inside ``run_one``, not its wait for a worker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..dialects import get_dialect
from .answers import TaskAnswer
from .graph import Task, TaskGraph
from .results import ERROR, OK, SKIPPED, TIMEOUT, TaskResult
from .templates import fill_placeholders, filled_size, json_string_size

log = logging.getLogger("ctxwarden.parallel")

RunOne = Callable[[Task, dict[str, Any]], Awaitable[TaskAnswer]]
ProgressCallback = Callable[[int, int, int], object]
ResultCallback = Callable[[TaskResult], object]


async def run_task_graph(
    graph: TaskGraph,
    run_one: RunOne,
    *,
    max_workers: int,
    task_timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
    on_progress: ProgressCallback | None = None,
    on_result: ResultCallback | None = None,
    max_body_bytes: int | None = None,
) -> list[TaskResult]:
    """Run every task of ``graph``; return their results in input order.

    ``run_one(task, body)`` gets the request body with placeholders filled and
    runs under ``task_timeout`` seconds (``None`` or ``<= 0``: no limit); on
    timeout the call is cancelled. A task that raises, answers non-2xx or times
    out marks its dependants, transitively, ``skipped``; independent tasks
    carry on.

    ``on_progress(done, total, failures)`` is called once at the start and then
    after each task ends (a failure and the skips it causes are one call;
    ``failures`` counts every status but ``ok``). ``on_result(result)`` is
    called as each result is final (skipped ones included). Exceptions from
    either callback are logged and ignored.

    With ``max_body_bytes``, a task whose request, placeholders filled, would
    be larger than that once serialized is not sent: it ends ``error`` with
    ``http_status`` 413 and its dependants are skipped. The size is computed
    before the body is built (:func:`.templates.filled_size`), so an answer
    inserted many times never makes a huge body in memory.

    Cancelling the caller (client gone) cancels every running call, and no
    further task starts.
    """
    if not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1, not {max_workers!r}")
    limit = task_timeout if task_timeout is not None and task_timeout > 0 else None
    run = _Run(graph, run_one, anyio.CapacityLimiter(max_workers), limit, clock, max_body_bytes,
               on_progress, on_result)
    return await run.execute()


class _Run:
    """The state of one run of a graph."""

    def __init__(self, graph: TaskGraph, run_one: RunOne, workers: anyio.CapacityLimiter, limit: float | None,
                 clock: Callable[[], float], max_body_bytes: int | None,
                 on_progress: ProgressCallback | None, on_result: ResultCallback | None) -> None:
        self.graph = graph
        self.run_one = run_one
        self.workers = workers
        self.limit = limit
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.on_progress = on_progress
        self.on_result = on_result
        self.sorter = graph.sorter()
        self.t0 = clock()
        self.wall0 = time.time()
        self.results: dict[str, TaskResult] = {}
        self.failures = 0
        #: id -> answer text, for the placeholders of the tasks that depend on it
        self.answers: dict[str, str] = {}
        #: id -> json_string_size of its answer, computed on first use
        self.answer_sizes: dict[str, int] = {}

    async def execute(self) -> list[TaskResult]:
        self._progress()
        if self.graph.tasks:
            async with anyio.create_task_group() as tg:
                self._start_ready(tg)
        return [self.results[t.id] for t in self.graph.tasks]

    def _start_ready(self, tg: TaskGroup) -> None:
        by_id = self.graph.by_id
        for task in sorted((by_id[i] for i in self.sorter.get_ready()), key=lambda t: t.index):
            tg.start_soon(self._run_task, task, tg)

    async def _run_task(self, task: Task, tg: TaskGroup) -> None:
        async with self.workers:
            result = await self._attempt(task)
        self._record(result)
        if result.ok:
            self.sorter.done(task.id)
        else:
            self._skip_dependants(result)
        self._progress()
        self._start_ready(tg)

    async def _attempt(self, task: Task) -> TaskResult:
        started = self.clock()
        oversize = self._oversize(task)
        if oversize is not None:
            return self._timed(task, started, status=ERROR, http_status=413, error=(
                f"request too large: with its placeholders filled the request would be {oversize} bytes, "
                f"more than max_body_bytes ({self.max_body_bytes}); it was not sent"))
        try:
            body = fill_placeholders(task.request, task.template, self.answers)
            with anyio.move_on_after(self.limit) as deadline:
                answer = await self.run_one(task, body)
            if deadline.cancelled_caught:
                return self._timed(task, started, status=TIMEOUT,
                                   error=f"timed out after {self.limit:g} s (task_timeout)")
            return self._answered(task, started, answer)
        except Exception as exc:  # run_one's failure, or what it returned is no TaskAnswer: the task's error
            return self._timed(task, started, status=ERROR, error=f"{type(exc).__name__}: {exc}" if str(exc)
                               else type(exc).__name__)
        except anyio.get_cancelled_exc_class():
            if anyio.current_effective_deadline() == -math.inf:
                raise  # the run itself is being cancelled
            # run_one raised a CancelledError of its own: an error, never a hang
            return self._timed(task, started, status=ERROR, error="CancelledError: the call was cancelled")

    def _answered(self, task: Task, started: float, answer: TaskAnswer) -> TaskResult:
        if answer.ok:
            self.answers[task.id] = get_dialect(task.dialect).answer_text(answer.body)
        return self._timed(task, started, status=OK if answer.ok else ERROR, http_status=answer.status,
                           answer=answer.body, error=None if answer.ok else answer.error_message(),
                           tokens_before=answer.tokens_before, tokens_after=answer.tokens_after, cache=answer.cache)

    def _timed(self, task: Task, started: float, **fields: Any) -> TaskResult:
        finished = self.clock()
        return TaskResult(id=task.id, started=started - self.t0, finished=finished - self.t0,
                          duration_ms=round((finished - started) * 1000, 3), run_started_at=self.wall0, **fields)

    def _oversize(self, task: Task) -> int | None:
        """The filled request's size when it is over ``max_body_bytes``, else None."""
        if self.max_body_bytes is None:
            return None
        for name, _ in task.template.counts:
            if name not in self.answer_sizes:
                self.answer_sizes[name] = json_string_size(self.answers[name])
        size = filled_size(task.request, task.template, self.answer_sizes)
        return size if size > self.max_body_bytes else None

    def _skip_dependants(self, failed: TaskResult) -> None:
        root = failed.id
        stack = [root]
        while stack:
            via = stack.pop()
            for d in self.graph.dependants[via]:
                if d in self.results:
                    continue
                how = "" if via == root else f" (via '{via}')"
                self._record(TaskResult(id=d, status=SKIPPED, blocked_by=root, run_started_at=self.wall0,
                                        error=f"skipped: dependency '{root}' ended with status {failed.status}{how}"))
                stack.append(d)

    def _record(self, result: TaskResult) -> None:
        self.results[result.id] = result
        if not result.ok:
            self.failures += 1
        if self.on_result is not None:
            _call_safely("on_result", self.on_result, result)

    def _progress(self) -> None:
        if self.on_progress is not None:
            _call_safely("on_progress", self.on_progress, len(self.results), len(self.graph), self.failures)


def _call_safely(name: str, callback: Callable[..., object], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:  # a broken progress bar must not break the run
        log.exception("%s callback failed", name)
