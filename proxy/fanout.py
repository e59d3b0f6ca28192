"""Parallel runs: each task of a graph answered by the gateway (same rewrite
and cache as a single request) inside the fan-out share of the upstream pool."""

from __future__ import annotations

from collections.abc import Callable

from .config import ParallelExecution
from .gate import UpstreamGate
from .gateway import Gateway
from .parallel import Task, TaskAnswer, TaskGraph, TaskResult, run_task_graph

DEFAULT_ANTHROPIC_VERSION = b"2023-06-01"


def task_headers(headers: list[tuple[bytes, bytes]], dialect: str) -> list[tuple[bytes, bytes]]:
    """The run's headers for one task: the caller's credentials and provider
    headers, without those that described the run's own body."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    kept.append((b"content-type", b"application/json"))
    if dialect == "anthropic" and not any(k.lower() == b"anthropic-version" for k, _ in kept):
        kept.append((b"anthropic-version", DEFAULT_ANTHROPIC_VERSION))
    return kept


async def run_parallel(gateway: Gateway, gate: UpstreamGate, graph: TaskGraph,
                       headers: list[tuple[bytes, bytes]], settings: ParallelExecution,
                       on_progress: Callable[[int, int, int], None] | None = None,
                       on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    gauge = gateway.telemetry.metrics.parallel_tasks

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        async with gate.fanout():
            gauge.inc()
            try:
                status, content, answer_headers = await gateway.answer_task(
                    task.dialect, task.upstream_path, task_headers(headers, task.dialect), body)
            finally:
                gauge.dec()
        return TaskAnswer.from_http(status, content, answer_headers)

    return await run_task_graph(graph, run_one, max_workers=settings.max_workers,
                                task_timeout=settings.task_timeout, on_progress=on_progress,
                                on_result=on_result)
