"""POST /_ctxwarden/parallel and `ctxwarden run-parallel` over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import serve_proxy
from tests.servers import closed_port, run_cli, serve_app


async def _slow(request):
    await asyncio.sleep(5)
    return JSONResponse({"choices": []})


@pytest.fixture(scope="module")
def slow_upstream_url():
    with serve_app(Starlette(routes=[Route("/v1/chat/completions", _slow, methods=["POST"])])) as url:
        yield url


def _config(upstream_url: str, slow_url: str, *, max_tasks: int = 50, timeout: float = 1) -> str:
    return f"""<performance_optimization>
  <parallel_execution><max_workers>4</max_workers><task_timeout>{timeout}</task_timeout>
    <resource_limit>0.8</resource_limit><max_tasks>{max_tasks}</max_tasks></parallel_execution>
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
    <upstream name="broken" dialect="openai" base_url="http://127.0.0.1:{closed_port()}"><model>broken-*</model></upstream>
    <upstream name="slow" dialect="openai" base_url="{slow_url}"><model>slow-*</model></upstream>
  </upstreams>
</performance_optimization>"""


@pytest.fixture(scope="module")
def parallel_url(fake_upstream_server, slow_upstream_url):
    with serve_proxy(_config(fake_upstream_server.url, slow_upstream_url)) as url:
        yield url


def _task(task_id: str, text: str, model: str = "gpt-4o-mini", **extra) -> dict:
    return {"id": task_id, "request": {"model": model, "messages": [{"role": "user", "content": text}]}, **extra}


def _run(url: str, tasks: list[dict]) -> httpx.Response:
    return httpx.post(url + "/_ctxwarden/parallel", json={"tasks": tasks}, timeout=30,
                      headers={"authorization": "Bearer sk-run"})


def test_dependencies_and_placeholders(parallel_url, upstream):
    anthropic_task = {"id": "c", "upstream_path": "/v1/messages",
                      "request": {"model": "claude-test-model", "max_tokens": 32,
                                  "messages": [{"role": "user", "content": "independent"}]}}
    r = _run(parallel_url, [_task("a", "first question"),
                            _task("b", "use this: {{a}}", depends_on=["a"]),
                            anthropic_task])
    assert r.status_code == 200
    results = r.json()["tasks"]
    assert [t["id"] for t in results] == ["a", "b", "c"]
    assert {t["status"] for t in results} == {"ok"}
    a, b, _ = results
    assert b["started"] >= a["finished"]
    a_text = a["answer"]["choices"][0]["message"]["content"]
    sent_b = [rec for rec in upstream.recorder.requests if "use this" in rec.body.decode()]
    assert a_text in sent_b[0].json()["messages"][0]["content"]
    assert all(rec.header("authorization") == "Bearer sk-run" for rec in upstream.recorder.requests
               if rec.path == "/v1/chat/completions")
    assert r.json()["summary"]["ok"] == 3
    for t in results:
        assert t["tokens_before"] > 0 and t["started_at"] and t["duration_ms"] >= 0


def test_failure_skips_dependants_and_timeout_is_reported(parallel_url, upstream):
    r = _run(parallel_url, [_task("bad", "x", model="broken-1"),
                            _task("after-bad", "{{bad}}", depends_on=["bad"]),
                            _task("slow", "y", model="slow-1"),
                            _task("fine", "z")])
    by_id = {t["id"]: t for t in r.json()["tasks"]}
    assert by_id["bad"]["status"] == "error" and by_id["bad"]["http_status"] == 502
    assert by_id["after-bad"]["status"] == "skipped" and by_id["after-bad"]["blocked_by"] == "bad"
    assert by_id["slow"]["status"] == "timeout"
    assert by_id["fine"]["status"] == "ok"


@pytest.mark.parametrize("tasks, words", [
    ([_task("a", "x", depends_on=["b"]), _task("b", "y", depends_on=["a"])], ["cycle", "'a'", "'b'"]),
    ([_task("a", "x", depends_on=["nope"])], ["unknown", "'nope'"]),
    ([_task("a", "x"), _task("a", "y")], ["duplicate", "'a'"]),
    ([_task("a", "x"), _task("b", "{{a}}")], ["placeholder", "'a'"]),
    ([{"id": "a"}], ["request"]),
    ([_task(str(i), "x") for i in range(51)], ["51", "50"]),
])
def test_bad_graphs_are_400_before_anything_is_sent(parallel_url, upstream, tasks, words):
    r = _run(parallel_url, tasks)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message
    assert len(upstream.recorder) == 0


def test_not_json_is_400(parallel_url, upstream):
    r = httpx.post(parallel_url + "/_ctxwarden/parallel", content=b"{", timeout=10)
    assert r.status_code == 400 and len(upstream.recorder) == 0


def test_tasks_use_the_cache(parallel_url, upstream):
    task = _task("a", f"cached {time.monotonic_ns()}")
    task["request"]["temperature"] = 0
    first = _run(parallel_url, [task]).json()["tasks"][0]
    second = _run(parallel_url, [task]).json()["tasks"][0]
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert len(upstream.recorder) == 1


def test_run_parallel_cli_writes_jsonl_and_progress(tmp_path, fake_upstream_server, slow_upstream_url):
    config = tmp_path / "config.xml"
    config.write_text(_config(fake_upstream_server.url, slow_upstream_url))
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"tasks": [_task("a", "one"), _task("b", "two {{a}}", depends_on=["a"]),
                                           _task("bad", "x", model="broken-1")]}))
    out = tmp_path / "results.jsonl"
    done = run_cli(["run-parallel", str(tasks), "--config", str(config), "--output", str(out)],
                   env={"OPENAI_API_KEY": "sk-cli"})
    assert done.returncode == 1, done.stderr  # one task failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in lines] == [("a", "ok"), ("b", "ok"), ("bad", "error")]
    assert "3/3" in done.stderr and "1 failed" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": [_task("a", "x", depends_on=["a"])]}))
    refused = run_cli(["run-parallel", str(bad), "--config", str(config)])
    assert refused.returncode == 2 and "cycle" in refused.stderr


async def test_fan_out_leaves_interactive_requests_their_share_of_the_pool(fake_upstream_server, upstream):
    """100 slow tasks may hold at most floor(10 x 0.8) = 8 of the 10 upstream
    connections; single requests sent meanwhile go straight through."""
    xml = f"""<performance_optimization>
  <parallel_execution><max_workers>64</max_workers><task_timeout>30</task_timeout>
    <resource_limit>0.8</resource_limit></parallel_execution>
  <server max_connections="10" max_keepalive_connections="10"/>
  <upstreams><upstream name="openai" dialect="openai" base_url="{fake_upstream_server.url}"/></upstreams>
</performance_optimization>"""
    with serve_proxy(xml) as url:
        async with httpx.AsyncClient(timeout=60) as client:
            run = asyncio.create_task(client.post(
                url + "/_ctxwarden/parallel", headers={"x-fake-delay": "0.2"},
                json={"tasks": [_task(f"t{i}", f"fan-out {i}") for i in range(100)]}))
            while sum("fan-out" in r.body.decode() for r in upstream.recorder.requests) < 8:
                await asyncio.sleep(0.01)
            interactive = [await client.post(url + "/v1/chat/completions",
                                             json={"model": "m", "messages": [{"role": "user", "content": f"now {i}"}]})
                           for i in range(5)]
            assert not run.done(), "single requests were answered while the fan-out was still running"
            results = (await run).json()
    assert {r.status_code for r in interactive} == {200}
    assert results["summary"]["ok"] == 100
    starts = sorted(r.received_at for r in upstream.recorder.requests if "fan-out" in r.body.decode())
    # Tasks arrive in waves of at most 8: the 9th starts only after the first finished.
    assert starts[8] - starts[0] >= 0.15
