"""Benchmark of the parallel executor (proxy/parallel/) over real HTTP.

    python bench/parallel.py [--delay 0.2] [--sizes 8,32,128] [--workers 4,16,64]
                             [--repeats N] [--overhead-tasks 10000] [--skip-gate] [--in-process]

Starts the fake upstream (tests/fake_upstream.py) under uvicorn on loopback,
in its own process (``--in-process``: in a thread of this one, via
tests.servers.serve_app; the server then competes with the client for this
process's GIL, which shows at 32+ concurrent calls). Every call asks it for a
fixed latency (x-fake-delay, 200 ms by default). For each task count it times
the tasks run one by one and through ``run_task_graph`` at each
``max_workers``, with a ``run_one`` that POSTs the task's request with one
shared httpx.AsyncClient, and prints the speedup and its ratio to the ideal
``tasks / ceil(tasks / workers)``. The 'gather' column runs the same calls
with asyncio.gather and a semaphore, no executor: the gap between the ideal and
'gather' is the HTTP stack's (client and server CPU per call), not the
executor's.

It then measures the executor's own cost per task with a zero-latency
``run_one`` (no HTTP) over many tasks: the executor's wall time minus the time
of the same calls awaited in a plain loop, divided by the number of tasks.

Last, with the upstream gate (pool 10, resource_limit 0.8) it runs a fan-out of
100 tasks and measures interactive calls made meanwhile, against their latency
with the gate idle.

Targets (issue 6): >= 3.8x for 8 tasks at max_workers 4; overhead < 1 ms/task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from ctxwarden.parallel.answers import TaskAnswer  # noqa: E402
from ctxwarden.parallel.executor import run_task_graph  # noqa: E402
from ctxwarden.parallel.gate import UpstreamGate  # noqa: E402
from ctxwarden.parallel.graph import Task, parse_task_graph  # noqa: E402
from tests.fake_upstream import create_fake_upstream  # noqa: E402
from tests.servers import free_port, serve_app, wait_for_port  # noqa: E402


def tasks_body(n: int, prefix: str = "t") -> dict:
    return {"tasks": [
        {"id": f"{prefix}{i}", "request": {"model": "gpt-4o-mini", "max_tokens": 16,
                                            "messages": [{"role": "user", "content": f"question {i}"}]}}
        for i in range(n)
    ]}


def make_run_one(client: httpx.AsyncClient, delay: float):
    headers = {"x-fake-delay": f"{delay:g}", "authorization": "Bearer sk-bench"}

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        # the body as it came on the wire (gzipped: the fake compresses when asked,
        # as real APIs do); from_http decodes it, as it does in the proxy
        async with client.stream("POST", task.upstream_path, json=body, headers=headers) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
        return TaskAnswer.from_http(resp.status_code, raw, resp.headers)

    return run_one


def repeats_for(n: int, w: int, delay: float, fixed: int | None) -> int:
    """Runs per configuration (median reported): 5 for short runs, 3 for long ones."""
    if fixed:
        return fixed
    return 5 if math.ceil(n / w) * delay <= 1.0 else 3


async def gather_baseline(graph, run_one, workers: int) -> float:
    sem = asyncio.Semaphore(workers)

    async def one(task: Task) -> None:
        async with sem:
            await run_one(task, dict(task.request))

    t = time.perf_counter()
    await asyncio.gather(*(one(task) for task in graph.tasks))
    return time.perf_counter() - t


async def http_section(url: str, delay: float, sizes: list[int], workers: list[int],
                       repeats: int | None = None) -> bool:
    limits = httpx.Limits(max_connections=max(workers) * 2, max_keepalive_connections=max(workers) * 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        run_one = make_run_one(client, delay)
        warm = make_run_one(client, 0)
        # open the connections first, so that no run pays for connection set-up
        g = parse_task_graph(tasks_body(max(workers) * 2, "w"), 10_000)
        await run_task_graph(g, warm, max_workers=max(workers), task_timeout=30)

        print(f"fake upstream latency {delay * 1000:.0f} ms per call, one shared httpx.AsyncClient")
        print("executor/gather: median of 5 runs (3 when a run takes over 1 s); "
              "one by one: median of 3 up to 2 s, else one run")
        print("'gather' is the same calls through asyncio.gather + a semaphore, no executor: what the "
              "HTTP stack alone allows\n")
        hdr = (f"{'tasks':>5}  {'one by one':>10}  {'workers':>7}  {'executor':>9}  {'gather':>8}  "
               f"{'speedup':>7}  {'ideal':>6}  {'ratio':>6}")
        print(hdr)
        print("-" * len(hdr))
        target_met = None
        for n in sizes:
            graph = parse_task_graph(tasks_body(n), 10_000)
            seqs = []
            for _ in range(3 if n * delay <= 2.0 else 1):  # short baselines: median of 3
                t = time.perf_counter()
                for task in graph.tasks:  # one by one
                    ans = await run_one(task, dict(task.request))
                    assert ans.status == 200, ans
                seqs.append(time.perf_counter() - t)
            seq = statistics.median(seqs)
            for w in workers:
                runs, raws = [], []
                for _ in range(repeats_for(n, w, delay, repeats)):
                    t = time.perf_counter()
                    results = await run_task_graph(graph, run_one, max_workers=w, task_timeout=30)
                    runs.append(time.perf_counter() - t)
                    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
                    raws.append(await gather_baseline(graph, run_one, w))
                par = statistics.median(runs)
                raw = statistics.median(raws)
                speedup = seq / par
                ideal = n / math.ceil(n / w)
                ratio = speedup / ideal
                print(f"{n:>5}  {seq:>9.3f}s  {w:>7}  {par:>8.3f}s  {raw:>7.3f}s  "
                      f"{speedup:>6.2f}x  {ideal:>5.1f}x  {ratio:>6.1%}")
                if n == 8 and w == 4:
                    target_met = speedup >= 3.8
        print()
        if target_met is not None:
            print(f"target >= 3.8x for 8 tasks at max_workers 4: {'met' if target_met else 'NOT met'}")
        return bool(target_met) if target_met is not None else True


async def overhead_section(n: int) -> bool:
    async def zero(task: Task, body: dict) -> TaskAnswer:
        return TaskAnswer(200, {"choices": [{"message": {"content": "x"}}]})

    def best(times: list[float]) -> float:
        return min(times)

    # independent tasks
    graph = parse_task_graph(tasks_body(n), n)
    direct, execd = [], []
    for _ in range(3):
        t = time.perf_counter()
        for task in graph.tasks:
            await zero(task, dict(task.request))
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        await run_task_graph(graph, zero, max_workers=64, task_timeout=300)
        execd.append(time.perf_counter() - t)
    flat = (best(execd) - best(direct)) / n

    # a layered DAG: every task depends on two of the previous layer and uses both answers
    width = 64
    tasks = []
    for i in range(n):
        layer, pos = divmod(i, width)
        deps = [] if layer == 0 else [f"t{(layer - 1) * width + pos}", f"t{(layer - 1) * width + (pos + 1) % width}"]
        text = "go" + "".join(f" {{{{{d}}}}}" for d in deps)
        tasks.append({"id": f"t{i}", "depends_on": deps, "request": {"messages": [{"role": "user", "content": text}]}})
    t = time.perf_counter()
    dag = parse_task_graph({"tasks": tasks}, n)
    parse_us = (time.perf_counter() - t) / n * 1e6
    dag_times = []
    for _ in range(3):
        t = time.perf_counter()
        results = await run_task_graph(dag, zero, max_workers=64, task_timeout=300)
        dag_times.append(time.perf_counter() - t)
        assert all(r.ok for r in results)
    dag_per = (best(dag_times) - best(direct)) / n
    # the same with the expanded-size check the proxy runs (max_body_bytes, 32 MiB by default)
    checked_times = []
    for _ in range(3):
        t = time.perf_counter()
        results = await run_task_graph(dag, zero, max_workers=64, task_timeout=300, max_body_bytes=32 << 20)
        checked_times.append(time.perf_counter() - t)
        assert all(r.ok for r in results)
    checked_per = (best(checked_times) - best(direct)) / n

    print(f"executor overhead, zero-latency run_one, {n} tasks, max_workers 64 (best of 3):")
    print(f"  independent tasks:                       {flat * 1e6:8.1f} us/task")
    print(f"  layered DAG (2 deps + 2 placeholders):   {dag_per * 1e6:8.1f} us/task")
    print(f"  same, with the max_body_bytes check:     {checked_per * 1e6:8.1f} us/task")
    print(f"  parse_task_graph of that DAG:            {parse_us:8.1f} us/task")
    ok = max(flat, dag_per) < 0.001
    print(f"target < 1 ms per task: {'met' if ok else 'NOT met'}")
    return ok


async def gate_section(url: str, delay: float) -> None:
    gate = UpstreamGate(pool_size=10, resource_limit=0.8)
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=10, max_keepalive_connections=10)) as client:
        post = make_run_one(client, delay)

        async def interactive() -> float:
            t = time.perf_counter()
            await gate.acquire("interactive")
            try:
                ans = await post(Task("i", {}), {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            finally:
                gate.release("interactive")
            assert ans.status == 200
            return time.perf_counter() - t

        async def fan_one(task: Task, body: dict) -> TaskAnswer:
            async with gate.fanout():
                return await post(task, body)

        idle = [await interactive() for _ in range(5)]
        graph = parse_task_graph(tasks_body(100, "f"), 1000)
        run = asyncio.create_task(run_task_graph(graph, fan_one, max_workers=64, task_timeout=60))
        await asyncio.sleep(0.05)
        busy = []
        peak_fanout = 0
        while not run.done():
            peak_fanout = max(peak_fanout, gate.snapshot()["fanout_in_use"])
            busy.append(await interactive())
        t_results = await run
        assert all(r.ok for r in t_results)
        print(f"gate: pool 10, resource_limit 0.8 (fan-out share {gate.fanout_limit}); "
              f"fan-out of 100 tasks at max_workers 64 took {summ(t_results):.2f} s")
        print(f"  interactive latency idle:        median {statistics.median(idle) * 1000:6.1f} ms  "
              f"max {max(idle) * 1000:6.1f} ms  (n={len(idle)})")
        print(f"  interactive latency in fan-out:  median {statistics.median(busy) * 1000:6.1f} ms  "
              f"max {max(busy) * 1000:6.1f} ms  (n={len(busy)}); fan-out slots held at most {peak_fanout}")


def summ(results) -> float:
    return max(r.finished for r in results) - min(r.started for r in results)


@contextlib.contextmanager
def fake_upstream(in_process: bool) -> Iterator[str]:
    """The fake upstream's base URL: under uvicorn in its own process (default,
    so the server does not share this process's GIL and event loop with the
    client being measured), or in a thread of this one (tests.servers.serve_app)."""
    if in_process:
        with serve_app(create_fake_upstream("bench").app) as url:
            yield url
        return
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tests.fake_upstream:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT)
    try:
        wait_for_port(port, proc=proc, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


async def main_async(args: argparse.Namespace) -> int:
    ok = True
    with fake_upstream(args.in_process) as url:
        print(f"fake upstream: {'thread of this process' if args.in_process else 'uvicorn subprocess'} at {url}")
        ok &= await http_section(url, args.delay, args.sizes, args.workers, args.repeats)
        print()
        ok &= await overhead_section(args.overhead_tasks)
        if not args.skip_gate:
            print()
            await gate_section(url, args.delay)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--delay", type=float, default=0.2, help="upstream latency in seconds (default 0.2)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64])
    p.add_argument("--repeats", type=int, default=None, help="parallel runs per configuration (median shown)")
    p.add_argument("--overhead-tasks", type=int, default=10_000)
    p.add_argument("--in-process", action="store_true",
                   help="serve the fake upstream in a thread of this process instead of a subprocess")
    p.add_argument("--skip-gate", action="store_true", help="skip the interactive-under-fan-out section")
    args = p.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
