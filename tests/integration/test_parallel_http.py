"""POST /_ctxwarden/parallel and `ctxwarden run-parallel` over real HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_responses_tasks_take_and_give_answers(parallel_url, upstream):
    """A Responses task's placeholders are filled in its `input` (a string, or
    the text parts of its items), and its answer fills a later task's."""
    as_string = {"id": "r", "upstream_path": "/v1/responses", "depends_on": ["a"],
                 "request": {"model": "gpt-4o-mini", "instructions": "keep {{a}} as written",
                             "input": "responses string: {{a}}"}}
    as_items = {"id": "s", "upstream_path": "/v1/responses", "depends_on": ["a"],
                "request": {"model": "gpt-4o-mini", "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "responses parts: {{a}}"}]}]}}
    r = _run(parallel_url, [_task("a", "the first answer"), as_string, as_items,
                            _task("z", "after responses: {{r}}", depends_on=["r"])])
    assert r.status_code == 200, r.text
    results = {t["id"]: t for t in r.json()["tasks"]}
    assert {t["status"] for t in results.values()} == {"ok"}
    a_text = results["a"]["answer"]["choices"][0]["message"]["content"]
    sent = {rec.body.decode(): rec for rec in upstream.recorder.requests if rec.path == "/v1/responses"}
    string_body = next(rec.json() for body, rec in sent.items() if "responses string" in body)
    assert string_body["input"] == f"responses string: {a_text}"
    assert string_body["instructions"] == "keep {{a}} as written"      # only the conversation is filled
    parts_body = next(rec.json() for body, rec in sent.items() if "responses parts" in body)
    assert parts_body["input"][0]["content"][0]["text"] == f"responses parts: {a_text}"
    r_text = "".join(part["text"] for item in results["r"]["answer"]["output"] if item["type"] == "message"
                     for part in item["content"] if part["type"] == "output_text")
    assert r_text
    sent_z = next(rec.json() for rec in upstream.recorder.requests if "after responses" in rec.body.decode())
    assert sent_z["messages"][0]["content"] == f"after responses: {r_text}"


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
    # the summary names what failed, and why
    summary = done.stderr[done.stderr.index("run-parallel: 3 tasks in "):]
    assert "2 ok, 1 failed:" in summary and "\n  bad: error - " in summary
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


# --------------------------------------------------------------------------- issue 11: hardening


def test_compressed_answers_fill_every_answer_and_placeholder(parallel_url, upstream):
    """Point 18: the fake upstream gzips its answers when asked (as real APIs
    do); every task's answer is read and every placeholder filled."""
    tag = time.monotonic_ns()
    anthropic = {"id": "c", "upstream_path": "/v1/messages", "depends_on": ["a"],
                 "request": {"model": "claude-test-model", "max_tokens": 32,
                             "messages": [{"role": "user", "content": [{"type": "text", "text": "c got {{a}}"}]}]}}
    r = _run(parallel_url, [_task("a", f"zipped {tag}"), _task("b", "b got {{a}}", depends_on=["a"]), anthropic,
                            _task("d", "d got {{b}} and {{c}}", depends_on=["b", "c"])])
    assert r.status_code == 200
    results = {t["id"]: t for t in r.json()["tasks"]}
    assert {t["status"] for t in results.values()} == {"ok"}
    texts = {"a": results["a"]["answer"]["choices"][0]["message"]["content"],
             "b": results["b"]["answer"]["choices"][0]["message"]["content"],
             "c": results["c"]["answer"]["content"][0]["text"],
             "d": results["d"]["answer"]["choices"][0]["message"]["content"]}
    assert all(texts.values()), texts
    sent = {rec.json()["messages"][0]["content"] if isinstance(rec.json()["messages"][0]["content"], str)
            else rec.json()["messages"][0]["content"][0]["text"]: rec for rec in upstream.recorder.requests}
    assert f"b got {texts['a']}" in sent and f"c got {texts['a']}" in sent
    assert f"d got {texts['b']} and {texts['c']}" in sent
    # the answers really were compressed on the way
    assert all("gzip" in rec.header("accept-encoding", "") for rec in sent.values())
    assert upstream.recorder.gzipped >= 4


def test_cached_compressed_answer_still_fills_placeholders(parallel_url, upstream):
    tag = time.monotonic_ns()
    first = _task("a", f"cache me {tag}")
    first["request"]["temperature"] = 0
    graph = [first, _task("b", "then {{a}}", depends_on=["a"])]
    runs = [_run(parallel_url, graph).json()["tasks"] for _ in range(2)]
    assert runs[1][0]["cache"] == "hit"
    for a, b in runs:
        assert a["status"] == b["status"] == "ok"
        assert a["answer"]["choices"][0]["message"]["content"]
    sent_b = [rec.json()["messages"][0]["content"] for rec in upstream.recorder.requests
              if rec.json()["messages"][0]["content"].startswith("then ")]
    answer = runs[0][0]["answer"]["choices"][0]["message"]["content"]
    assert sent_b and all(s == f"then {answer}" for s in sent_b)


SMALL_LIMIT = 65536


@pytest.fixture(scope="module")
def small_parallel_url(fake_upstream_server):
    xml = f"""<performance_optimization>
  <parallel_execution><max_workers>4</max_workers><task_timeout>30</task_timeout>
    <resource_limit>0.8</resource_limit></parallel_execution>
  <server max_body_bytes="{SMALL_LIMIT}"/>
  <upstreams><upstream name="openai" dialect="openai" base_url="{fake_upstream_server.url}"/></upstreams>
</performance_optimization>"""
    with serve_proxy(xml) as url:
        yield url


def test_placeholder_bomb_is_refused_before_it_is_sent(small_parallel_url, upstream):
    """Point 3: a 10 KB run whose placeholders would expand past max_body_bytes:
    the task fails with 413, its dependants are skipped, nothing goes upstream."""
    bomb = "{{seed}}" * 1200  # ~10 KB; the answer is ~66 bytes: ~80 KB filled
    r = _run(small_parallel_url, [_task("seed", "s" * 200), _task("bomb", bomb, depends_on=["seed"]),
                                  _task("after", "{{bomb}}", depends_on=["bomb"]),
                                  _task("small", "fine {{seed}}", depends_on=["seed"])])
    assert r.status_code == 200
    by_id = {t["id"]: t for t in r.json()["tasks"]}
    assert by_id["bomb"]["status"] == "error" and by_id["bomb"]["http_status"] == 413
    assert "max_body_bytes" in by_id["bomb"]["error"] and str(SMALL_LIMIT) in by_id["bomb"]["error"]
    assert by_id["after"]["status"] == "skipped" and by_id["after"]["blocked_by"] == "bomb"
    assert by_id["seed"]["status"] == by_id["small"]["status"] == "ok"
    sent = [rec.json()["messages"][0]["content"] for rec in upstream.recorder.requests]
    assert len(sent) == 2 and not any("{{" in s or len(s) > 1000 for s in sent)
    assert max(len(rec.body) for rec in upstream.recorder.requests) <= SMALL_LIMIT


class HeldUpstream:
    """An OpenAI-shaped upstream whose answers wait until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = 0
        self._lock = threading.Lock()

    async def chat(self, request):
        await request.body()
        with self._lock:
            self.received += 1
        await asyncio.to_thread(self.release.wait, 30)
        return JSONResponse({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "released"}, "finish_reason": "stop"}]})

    def wait_received(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.received < n:
            assert time.monotonic() < deadline, f"only {self.received} of {n} calls arrived"
            time.sleep(0.01)


def test_runs_per_tenant_are_capped_with_a_429(monkeypatch):
    """Point 3: one credential may have MAX_RUNS_PER_TENANT runs at once; one
    more is a 429 in the OpenAI shape with Retry-After, and sends nothing."""
    from ctxwarden.parallel.tenants import MAX_RUNS_PER_TENANT, RETRY_AFTER_SECONDS

    held = HeldUpstream()
    app = Starlette(routes=[Route("/v1/chat/completions", held.chat, methods=["POST"])])
    with serve_app(app) as upstream_url:
        xml = f"""<performance_optimization>
  <upstreams><upstream name="openai" dialect="openai" base_url="{upstream_url}"/></upstreams>
</performance_optimization>"""
        with serve_proxy(xml) as url, ThreadPoolExecutor(MAX_RUNS_PER_TENANT + 1) as pool:
            def run(key: str, n: int = 1) -> httpx.Response:
                return httpx.post(url + "/_ctxwarden/parallel", timeout=30, headers={"authorization": f"Bearer {key}"},
                                  json={"tasks": [_task(f"t{i}", "x") for i in range(n)]})

            try:
                running = [pool.submit(run, "sk-busy") for _ in range(MAX_RUNS_PER_TENANT)]
                held.wait_received(MAX_RUNS_PER_TENANT)
                refused = run("sk-busy", 3)
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
                error = refused.json()["error"]
                assert error["type"] == "requests" and "at most" in error["message"]
                assert held.received == MAX_RUNS_PER_TENANT  # nothing of the refused run was sent
                other = pool.submit(run, "sk-other")  # another tenant is not held back
                held.wait_received(MAX_RUNS_PER_TENANT + 1)
            finally:
                held.release.set()
            assert all(f.result().status_code == 200 for f in running + [other])
            assert run("sk-busy").status_code == 200  # the slots came back


def test_client_leaving_cancels_the_run(fake_upstream_server, upstream):
    """Point 11: a 200-task run whose client goes away early does not make 200 calls."""
    xml = f"""<performance_optimization>
  <parallel_execution><max_workers>4</max_workers><task_timeout>30</task_timeout>
    <resource_limit>0.8</resource_limit></parallel_execution>
  <upstreams><upstream name="openai" dialect="openai" base_url="{fake_upstream_server.url}"/></upstreams>
</performance_optimization>"""
    from ctxwarden.app import create_app
    from ctxwarden.config import parse_config
    from ctxwarden.parallel.tenants import tenant_limits

    app = create_app(parse_config(xml))
    body = json.dumps({"tasks": [_task(f"t{i}", f"leaving {i}") for i in range(200)]}).encode()
    with serve_app(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /_ctxwarden/parallel HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                         b"content-type: application/json\r\nx-fake-delay: 0.2\r\n"
                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert upstream.recorder.wait_for(lambda rec: len(rec) >= 4, timeout=10)
        # the client is gone: the run must wind down, its upstream slots come back
        proxy = app.state.proxy
        deadline = time.monotonic() + 10
        while proxy.gate.snapshot()["fanout_in_use"] or len(tenant_limits(proxy.gate)):
            assert time.monotonic() < deadline, "the run kept going after its client left"
            time.sleep(0.02)
        calls = len(upstream.recorder)
    assert calls < 50, f"{calls} of 200 tasks were sent after the client left"
