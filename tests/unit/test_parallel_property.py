"""Property tests of the task-graph executor over random DAGs and outcomes."""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxwarden.parallel.answers import TaskAnswer
from ctxwarden.parallel.executor import run_task_graph
from ctxwarden.parallel.graph import Task, TaskGraphError, parse_task_graph

OUTCOMES = ["ok", "ok", "ok", "slow_ok", "status", "raise", "hang"]
TIMEOUT = 0.03


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=14))
    # node k may depend only on nodes < k (so the graph is acyclic) ...
    deps = [sorted(draw(st.sets(st.integers(0, k - 1), max_size=3))) if k else [] for k in range(n)]
    outcomes = [draw(st.sampled_from(OUTCOMES)) for _ in range(n)]
    # ... and the listing order is a random permutation of the topological one
    order = draw(st.permutations(range(n)))
    use_placeholders = draw(st.booleans())
    max_workers = draw(st.integers(min_value=1, max_value=6))
    return n, deps, outcomes, order, use_placeholders, max_workers


def build_body(n, deps, order, use_placeholders):
    tasks = []
    for k in order:
        text = f"task {k}"
        if use_placeholders and deps[k]:
            text += " " + " ".join(f"[{{{{n{d}}}}}]" for d in deps[k])
        tasks.append({"id": f"n{k}", "request": {"messages": [{"role": "user", "content": text}]},
                      "depends_on": [f"n{d}" for d in deps[k]]})
    return {"tasks": tasks}


def ancestors(deps, k):
    seen, stack = set(), list(deps[k])
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(deps[d])
    return seen


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags(case) -> None:
    n, deps, outcomes, order, use_placeholders, max_workers = case
    graph = parse_task_graph(build_body(n, deps, order, use_placeholders), max_tasks=100)
    log: list[tuple[str, int]] = []
    bodies: dict[int, dict] = {}
    in_flight = 0
    peak = 0

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        nonlocal in_flight, peak
        k = int(task.id[1:])
        log.append(("start", k))
        bodies[k] = body
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            outcome = outcomes[k]
            await asyncio.sleep(0.003 if outcome == "slow_ok" else 0)
            if outcome == "hang":
                await asyncio.sleep(10)
            if outcome == "raise":
                raise ConnectionError("boom")
            if outcome == "status":
                return TaskAnswer(503, {"error": {"message": "down"}})
            return TaskAnswer(200, {"choices": [{"message": {"content": f"A{k}"}}]})
        finally:
            in_flight -= 1
            log.append(("end", k))

    results = asyncio.run(run_task_graph(graph, run_one, max_workers=max_workers, task_timeout=TIMEOUT))

    assert [r.id for r in results] == [f"n{k}" for k in order]
    assert peak <= max_workers
    status = {int(r.id[1:]): r for r in results}
    expected_own = {"ok": "ok", "slow_ok": "ok", "status": "error", "raise": "error", "hang": "timeout"}
    for k in range(n):
        r = status[k]
        anc = ancestors(deps, k)
        failed_anc = {a for a in anc if status[a].status != "ok" and status[a].status != "skipped"}
        if all(status[d].status == "ok" for d in deps[k]):
            # ran, after every dependency ended, exactly once
            assert r.status == expected_own[outcomes[k]]
            assert log.count(("start", k)) == 1
            for d in deps[k]:
                assert log.index(("start", k)) > log.index(("end", d))
                assert r.started >= status[d].finished
            if use_placeholders:
                for d in deps[k]:
                    assert f"[A{d}]" in bodies[k]["messages"][0]["content"]
            assert r.started is not None and r.finished >= r.started
        else:
            assert r.status == "skipped"
            assert ("start", k) not in log
            assert r.blocked_by is not None and int(r.blocked_by[1:]) in failed_anc
            assert r.started is None
        if r.status == "ok":
            assert all(status[a].status == "ok" for a in anc)
    # every run that started also ended (timeouts cancelled their calls)
    assert sorted(k for kind, k in log if kind == "start") == sorted(k for kind, k in log if kind == "end")


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.data())
def test_any_cycle_is_refused_and_named(n, data) -> None:
    # a ring over a random subset, plus random acyclic noise edges
    ring = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    deps = {k: set() for k in range(n)}
    for a, b in zip(ring, ring[1:] + ring[:1]):
        deps[a].add(b)
    for k in range(n):
        deps[k] |= set(data.draw(st.sets(st.integers(0, k), max_size=2)) - {k})
    body = {"tasks": [{"id": f"n{k}", "request": {"messages": []}, "depends_on": [f"n{d}" for d in sorted(deps[k])]}
                      for k in random.Random(n).sample(range(n), n)]}
    try:
        parse_task_graph(body, 100)
    except TaskGraphError as exc:
        msg = str(exc)
        assert msg.startswith("dependency cycle: ")
        names = [s.strip("'") for s in msg[len("dependency cycle: "):].split(" -> ")]
        assert names[0] == names[-1]
        # the named path really is a cycle
        for a, b in zip(names, names[1:]):
            assert int(b[1:]) in deps[int(a[1:])]
    else:
        raise AssertionError("a graph with a cycle was accepted")
