"""Issue 11 for parallel runs: the placeholder bomb (expanded size checked
before anything is built or sent), answers read whatever their encoding, the
per-tenant cap, and runs cancelled when their client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from types import SimpleNamespace
from typing import Any

import pytest

from ctxwarden.dialects import get_dialect
from ctxwarden.config import ParallelExecution
from ctxwarden.errors import ClientClosed, error_response
from ctxwarden.parallel import answers, executor
from ctxwarden.parallel.answers import AnswerUnreadable, TaskAnswer, decode_content
from ctxwarden.parallel.endpoint import run_parallel, task_headers
from ctxwarden.parallel.executor import run_task_graph
from ctxwarden.parallel.gate import UpstreamGate
from ctxwarden.parallel.graph import Task, parse_task_graph
from ctxwarden.parallel.templates import fill_placeholders, filled_size, json_string_size, request_size
from ctxwarden.parallel.tenants import (
    MAX_RUNS_PER_TENANT,
    RETRY_AFTER_SECONDS,
    TenantLimits,
    TooManyRuns,
    tenant_limits,
)


def chat(content: Any) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def graph(*tasks: dict):
    return parse_task_graph({"tasks": list(tasks)}, 500)


def openai_answer(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


# --------------------------------------------------------------------------- expanded size


ANSWERS = {"a": 'plain', "b": 'qu"ote\\ back\nslash é 漢字 \U0001F600 \x01', "c": ""}


@pytest.mark.parametrize("content", [
    "{{a}}",
    "x {{a}} y {{a}}{{b}} {{{{a}} {{ a }} }} {{ {{c}}",
    [{"type": "text", "text": "pre {{b}} post"}, {"type": "image_url", "image_url": {"url": "{{a}}"}},
     {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "{{a}}{{{{"}]},
     {"type": "tool_result", "tool_use_id": "u", "content": "{{c}} and {{b}}"}],
    "no placeholders at all, but ünïcödé and \"quotes\"",
])
def test_filled_size_is_the_serialized_size_of_the_filled_request(content) -> None:
    raw = {"id": "t", "request": {**chat(content), "temperature": 0.5, "metadata": {"k": "{{a}}"}},
           "depends_on": ["a", "b", "c"]}
    g = graph({"id": "a", "request": chat("1")}, {"id": "b", "request": chat("2")},
              {"id": "c", "request": chat("3")}, raw)
    task = g.by_id["t"]
    sizes = {k: json_string_size(v) for k, v in ANSWERS.items()}
    expected = len(json.dumps(fill_placeholders(task.request, task.template, ANSWERS), ensure_ascii=False).encode())
    assert filled_size(task.request, task.template, sizes) == expected
    assert request_size(task.request) == len(json.dumps(task.request, ensure_ascii=False).encode())


@pytest.mark.parametrize("conversation", [
    "x {{a}} y {{a}}{{b}} {{{{a}} {{ a }} }} {{ {{c}}",
    [{"role": "user", "content": [{"type": "input_text", "text": "pre {{b}} post"},
                                  {"type": "input_image", "image_url": "{{a}}"}]},
     {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "{{c}}{{{{"}]},
     {"type": "function_call_output", "call_id": "c1", "output": "{{a}} and {{b}}"}],
])
def test_filled_size_of_a_responses_task(conversation) -> None:
    raw = {"id": "t", "upstream_path": "/v1/responses", "depends_on": ["a", "b", "c"],
           "request": {"model": "gpt-4o-mini", "instructions": "{{a}}", "input": conversation}}
    g = graph({"id": "a", "request": chat("1")}, {"id": "b", "request": chat("2")},
              {"id": "c", "request": chat("3")}, raw)
    task = g.by_id["t"]
    assert task.placeholders == {"a", "b", "c"} and task.template.escapes == 1
    sizes = {k: json_string_size(v) for k, v in ANSWERS.items()}
    expected = len(json.dumps(fill_placeholders(task.request, task.template, ANSWERS), ensure_ascii=False).encode())
    assert filled_size(task.request, task.template, sizes) == expected


class Calls:
    """A run_one that answers every task with a fixed text, recording calls."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.called: list[str] = []

    async def __call__(self, task: Task, body: dict) -> TaskAnswer:
        self.called.append(task.id)
        return TaskAnswer(200, openai_answer(self.text))


async def test_placeholder_bomb_fails_before_the_body_is_built_and_nothing_is_sent(monkeypatch) -> None:
    limit = 64 * 1024
    # 2,000 x {{a}} is a 10 KB template; filled with a 1 KB answer it is 2 MB
    g = graph({"id": "a", "request": chat("seed")},
              {"id": "bomb", "request": chat("{{a}}" * 2000), "depends_on": ["a"]},
              {"id": "after", "request": chat("{{bomb}}"), "depends_on": ["bomb"]},
              {"id": "fine", "request": chat("short: {{a}}"), "depends_on": ["a"]})
    filled: list[str] = []
    real_fill = executor.fill_placeholders
    ids = {id(t.request): t.id for t in g}

    def spy(request, template, answers):
        filled.append(ids[id(request)])
        return real_fill(request, template, answers)

    monkeypatch.setattr(executor, "fill_placeholders", spy)
    calls = Calls("x" * 1000)
    results = {r.id: r for r in await run_task_graph(g, calls, max_workers=4, task_timeout=None,
                                                     max_body_bytes=limit)}
    bomb = results["bomb"]
    assert bomb.status == "error" and bomb.http_status == 413
    assert "max_body_bytes" in bomb.error and str(limit) in bomb.error and "not sent" in bomb.error
    assert results["after"].status == "skipped" and results["after"].blocked_by == "bomb"
    assert results["fine"].status == "ok" and results["a"].status == "ok"
    assert sorted(calls.called) == ["a", "fine"]  # the bomb never reached run_one
    assert "bomb" not in filled  # ... and its body was never built


async def test_size_limit_is_inclusive() -> None:
    g = graph({"id": "a", "request": chat("seed")},
              {"id": "b", "request": chat("say {{a}}"), "depends_on": ["a"]})
    b = g.by_id["b"]
    size = filled_size(b.request, b.template, {"a": json_string_size("answer")})
    for limit, status in ((size, "ok"), (size - 1, "error")):
        calls = Calls("answer")
        results = await run_task_graph(g, calls, max_workers=1, task_timeout=None, max_body_bytes=limit)
        assert results[1].status == status, limit


async def test_request_without_placeholders_over_the_limit_is_refused_too() -> None:
    g = graph({"id": "big", "request": chat("y" * 5000)})
    calls = Calls("z")
    [r] = await run_task_graph(g, calls, max_workers=1, task_timeout=None, max_body_bytes=1000)
    assert r.status == "error" and r.http_status == 413 and calls.called == []


# --------------------------------------------------------------------------- answer encodings


BODY = json.dumps(openai_answer("compressed answer")).encode()


@pytest.mark.parametrize("encoding, data", [
    ("gzip", gzip.compress(BODY)),
    ("GZIP", gzip.compress(BODY[:10]) + gzip.compress(BODY[10:])),  # two members
    ("x-gzip", gzip.compress(BODY) + b"\0\0\0"),
    ("deflate", zlib.compress(BODY)),
    ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
    ("identity", BODY),
    (None, BODY),
    ("gzip, identity", gzip.compress(BODY)),
    ("deflate, gzip", gzip.compress(zlib.compress(BODY))),
])
def test_answers_are_decoded_whatever_their_encoding(encoding, data) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    answer = TaskAnswer.from_http(200, data, headers)
    assert answer.error is None and get_dialect("openai").answer_text(answer.body) == "compressed answer"
    assert decode_content(data, encoding) == BODY


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MB in about 8 KB
    with pytest.raises(AnswerUnreadable, match="larger than"):
        decode_content(bomb, "gzip", max_bytes=1024 * 1024)
    answer = TaskAnswer.from_http(200, bomb, {"content-encoding": "gzip"}, max_bytes=1024)
    assert answer.body is None and "could not be read" in answer.error


@pytest.mark.parametrize("encoding, data, words", [
    ("br", b"\x0b\x02\x80{}\x03", "br"),  # brotli is not installed here
    ("compress", b"...", "compress"),
    ("gzip", gzip.compress(BODY)[:-12], "gzip"),  # truncated
    ("gzip", b"not gzip at all", "gzip"),
])
def test_unreadable_answers_fail_the_task_instead_of_ok_with_no_answer(encoding, data, words) -> None:
    if encoding == "br" and answers._brotli is not None:  # pragma: no cover - depends on the env
        pytest.skip("brotli installed")
    answer = TaskAnswer.from_http(200, data, {"content-encoding": encoding})
    assert answer.body is None and words in answer.error


def test_a_2xx_answer_that_is_not_json_is_an_error() -> None:
    assert "not JSON" in TaskAnswer.from_http(200, b"<html>", {}).error
    assert "empty" in TaskAnswer.from_http(200, b"", {}).error
    assert TaskAnswer.from_http(502, b"<html>bad gateway</html>").error is None  # reported from the status


async def test_unreadable_answer_skips_dependants() -> None:
    g = graph({"id": "a", "request": chat("x")},
              {"id": "b", "request": chat("{{a}}"), "depends_on": ["a"]})

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        return TaskAnswer.from_http(200, b"\x1f\x8b garbage", {"content-encoding": "gzip"})

    a, b = await run_task_graph(g, run_one, max_workers=2, task_timeout=None)
    assert a.status == "error" and a.http_status == 200 and "could not be read" in a.error
    assert b.status == "skipped" and b.blocked_by == "a"


def test_task_headers_ask_for_what_the_executor_decodes() -> None:
    sent = [(b"Authorization", b"Bearer k"), (b"Accept-Encoding", b"br"), (b"Content-Encoding", b"gzip"),
            (b"Content-Length", b"12"), (b"Content-Type", b"application/json; charset=latin-1"),
            (b"x-custom", b"1")]
    headers = task_headers(sent, "openai")
    names = [k.lower() for k, _ in headers]
    assert dict((k.lower(), v) for k, v in headers)[b"accept-encoding"] == b"gzip, deflate"
    assert names.count(b"accept-encoding") == 1 and names.count(b"content-type") == 1
    assert b"content-encoding" not in names and b"content-length" not in names
    assert (b"Authorization", b"Bearer k") in headers and (b"x-custom", b"1") in headers


# --------------------------------------------------------------------------- tenants


def test_tenant_run_cap_is_a_429_with_retry_after_in_the_openai_shape() -> None:
    limits = TenantLimits()
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_RUNS_PER_TENANT):
            stack.enter_context(limits.run("t1", 4))
        assert limits.runs("t1") == MAX_RUNS_PER_TENANT
        with pytest.raises(TooManyRuns) as err:
            limits.run("t1", 4).__enter__()
        with limits.run("t2", 4):  # another tenant is not held back
            assert limits.runs("t2") == 1
    assert len(limits) == 0  # entries go with the tenant's last run
    response = error_response(err.value, get_dialect("openai"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = json.loads(response.body)
    assert body["error"]["type"] == "requests" and str(MAX_RUNS_PER_TENANT) in body["error"]["message"]
    assert json.loads(error_response(err.value, get_dialect("anthropic")).body)["error"]["type"] == "rate_limit_error"


class StubGateway:
    """What run_parallel uses of a Gateway: answer_task, config, a gauge."""

    def __init__(self, delay: float = 0.0, max_body_bytes: int = 1 << 20) -> None:
        self.delay = delay
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.cancelled = 0
        self.started = asyncio.Event()
        gauge = SimpleNamespace(inc=lambda: None, dec=lambda: None)
        self.telemetry = SimpleNamespace(metrics=SimpleNamespace(parallel_tasks=gauge))
        self.config = SimpleNamespace(server=SimpleNamespace(max_body_bytes=max_body_bytes))

    async def answer_task(self, dialect, path, headers, body):
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.set()
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return 200, gzip.compress(json.dumps(openai_answer("ans")).encode()), {"Content-Encoding": "gzip"}


def settings(max_workers: int = 4) -> ParallelExecution:
    return ParallelExecution(max_workers=max_workers, task_timeout=30, resource_limit=1.0)


def tasks(n: int, prefix: str = "t") -> Any:
    return graph(*({"id": f"{prefix}{i}", "request": chat(f"q{i}")} for i in range(n)))


async def test_tasks_in_flight_are_capped_per_tenant_across_its_runs() -> None:
    gate = UpstreamGate(100, 1.0)
    gw = StubGateway(delay=0.01)
    creds = [(b"authorization", b"Bearer same")]
    runs = [run_parallel(gw, gate, tasks(12, p), creds, settings(3)) for p in "abc"]
    results = await asyncio.gather(*runs)
    assert all(r.status == "ok" and r.answer is not None for rs in results for r in rs)
    assert gw.peak <= 3  # max_workers over the tenant's three runs, not per run
    assert len(tenant_limits(gate)) == 0


async def test_fifth_run_of_a_tenant_is_refused_before_anything_is_sent() -> None:
    gate = UpstreamGate(100, 1.0)
    gw = StubGateway(delay=30)
    creds = [(b"authorization", b"Bearer busy")]
    held = [asyncio.create_task(run_parallel(gw, gate, tasks(1, f"h{i}"), creds, settings()))
            for i in range(MAX_RUNS_PER_TENANT)]
    try:
        while gw.calls < MAX_RUNS_PER_TENANT:
            await asyncio.sleep(0.001)
        with pytest.raises(TooManyRuns):
            await run_parallel(gw, gate, tasks(1, "x"), creds, settings())
        assert gw.calls == MAX_RUNS_PER_TENANT
        other = asyncio.create_task(run_parallel(gw, gate, tasks(1, "o"), [(b"x-api-key", b"other")], settings()))
        while gw.calls < MAX_RUNS_PER_TENANT + 1:
            await asyncio.sleep(0.001)
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
    finally:
        for h in held:
            h.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    assert len(tenant_limits(gate)) == 0 and gate.snapshot()["in_use"] == 0


class Disconnecting:
    """A request whose client leaves when `leave` is set."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()

    async def receive(self) -> dict:
        await self.leave.wait()
        return {"type": "http.disconnect"}


async def test_client_leaving_cancels_the_run() -> None:
    gate = UpstreamGate(100, 1.0)
    gw = StubGateway(delay=30)
    request = Disconnecting()
    run = asyncio.create_task(run_parallel(gw, gate, tasks(200), [], settings(4), request=request))
    await gw.started.wait()
    request.leave.set()
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(run, 10)
    assert gw.calls == 4 and gw.cancelled == 4 and gw.in_flight == 0
    assert gate.snapshot()["in_use"] == 0 and len(tenant_limits(gate)) == 0


async def test_run_that_ends_first_stops_watching_the_client() -> None:
    gate = UpstreamGate(100, 1.0)
    gw = StubGateway()
    request = Disconnecting()
    results = await asyncio.wait_for(run_parallel(gw, gate, tasks(5), [], settings(), request=request), 10)
    assert [r.status for r in results] == ["ok"] * 5 and gw.cancelled == 0
