"""CPU per request of the cancellation constructs on a request's way: a
request's work watched for the client's disconnect (an anyio task group
and its task, or an anyio scope cancelled by a bare asyncio task:
incoming.until_disconnected; or that scope with the task's start put off by
a timer that the work outlasts or not: incoming.ClientWatch), and a
deadline (anyio.fail_after or asyncio.timeout). Each runs around a piece of
work that does not suspend (or, for the watch, suspends once, as a request
waiting for its upstream does, so that a started watch task runs), on uvloop,
N times; the figure is CPU time (process_time) per use.

    python bench/cancel_scopes.py
"""

from __future__ import annotations

import asyncio

import anyio

from _micro import load_average, per_await_us, run

N = 20000


async def _work() -> int:
    return 1


async def _forever() -> None:
    await asyncio.Event().wait()


async def task_group() -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_forever)
        await _work()
        tasks.cancel_scope.cancel()


async def _waits() -> None:
    await asyncio.sleep(0)


def _watcher_task() -> asyncio.Task:
    return asyncio.get_running_loop().create_task(_forever())


def _timer() -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(10, print)


async def _watched(start_watch, work, settle: bool) -> None:
    """`work` in an anyio scope that `start_watch()`'s task or timer would
    cancel; with `settle`, the watch's cancellation runs before the figure
    ends, as it does after a response."""
    scope = anyio.CancelScope()
    watch = start_watch()
    try:
        with scope:
            await work()
    finally:
        watch.cancel()
        if settle:
            await asyncio.sleep(0)


async def scope_and_bare_task() -> None:
    await _watched(_watcher_task, _work, settle=False)


async def watch_task_started() -> None:
    await _watched(_watcher_task, _waits, settle=True)


async def watch_timer_not_reached() -> None:
    await _watched(_timer, _waits, settle=True)


async def anyio_fail_after() -> None:
    with anyio.fail_after(10):
        await _work()


async def asyncio_timeout() -> None:
    async with asyncio.timeout(10):
        await _work()


async def main() -> None:
    print(load_average())
    for construct in (task_group, scope_and_bare_task, watch_task_started, watch_timer_not_reached,
                      anyio_fail_after, asyncio_timeout):
        print(f"  {construct.__name__:24} {await per_await_us(construct, N):6.1f} us per use")


if __name__ == "__main__":
    run(main)
