"""The task-graph executor (proxy/parallel/): parsing, placeholders, running."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ctxwarden.errors import BadRequest
from ctxwarden.dialects import get_dialect
from ctxwarden.parallel.answers import TaskAnswer
from ctxwarden.parallel.executor import run_task_graph
from ctxwarden.parallel.gate import UpstreamGate
from ctxwarden.parallel.graph import Task, TaskGraphError, parse_task_graph
from ctxwarden.parallel.results import TaskResult, summarize
from ctxwarden.parallel.templates import fill_placeholders, filled_size, json_string_size

# --------------------------------------------------------------------------- helpers


def chat(text: str, **extra: Any) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def task(tid: str, text: str = "hi", deps: list[str] | None = None, **extra: Any) -> dict:
    t: dict[str, Any] = {"id": tid, "request": chat(text)}
    if deps is not None:
        t["depends_on"] = deps
    t.update(extra)
    return t


def graph(*tasks: dict, max_tasks: int = 100):
    return parse_task_graph({"tasks": list(tasks)}, max_tasks)


def filled(task: Task, answers: dict[str, str]) -> dict:
    return fill_placeholders(task.request, task.template, answers)


def openai_answer(text: str) -> dict:
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def anthropic_answer(*texts: str) -> dict:
    return {"id": "msg", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": t} for t in texts]}


class Recorder:
    """A fake run_one: sleeps per task, records order and concurrency."""

    def __init__(self, delays: dict[str, float] | None = None, default: float = 0.01,
                 fail: dict[str, Any] | None = None) -> None:
        self.delays = delays or {}
        self.default = default
        self.fail = fail or {}  # id -> exception instance or HTTP status
        self.in_flight = 0
        self.max_in_flight = 0
        self.events: list[tuple[str, str]] = []  # ("start"|"end", id)
        self.bodies: dict[str, dict] = {}
        self.cancelled: list[str] = []

    async def __call__(self, task: Task, body: dict) -> TaskAnswer:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.events.append(("start", task.id))
        self.bodies[task.id] = body
        try:
            await asyncio.sleep(self.delays.get(task.id, self.default))
        except asyncio.CancelledError:
            self.cancelled.append(task.id)
            raise
        finally:
            self.in_flight -= 1
        self.events.append(("end", task.id))
        f = self.fail.get(task.id)
        if isinstance(f, BaseException):
            raise f
        if isinstance(f, int):
            return TaskAnswer(f, {"error": {"message": "rate limited", "type": "requests"}})
        return TaskAnswer(200, openai_answer(f"answer of {task.id}"), tokens_before=100, tokens_after=60, cache="miss")

    def position(self, kind: str, tid: str) -> int:
        return self.events.index((kind, tid))


# --------------------------------------------------------------------------- parsing


def test_parse_defaults_and_order() -> None:
    g = graph(task("b", deps=["a"]), task("a"), {"id": "c", "request": chat("x"),
                                                 "upstream_path": "/v1/messages", "depends_on": ["a", "a"]})
    assert g.ids == ["b", "a", "c"]
    assert g.by_id["b"].depends_on == ("a",)
    assert g.by_id["a"].upstream_path == "/v1/chat/completions"
    assert g.by_id["a"].dialect == "openai"
    assert g.by_id["c"].upstream_path == "/v1/messages" and g.by_id["c"].dialect == "anthropic"
    assert g.by_id["c"].depends_on == ("a",)  # repeats dropped
    assert g.dependants["a"] == ("b", "c")
    assert [t.index for t in g] == [0, 1, 2]
    assert len(g) == 3


def test_parse_empty_task_list() -> None:
    assert len(parse_task_graph({"tasks": []}, 10)) == 0


def test_parse_keeps_request_untouched() -> None:
    req = chat("hi", temperature=0.3, tools=[{"type": "function", "function": {"name": "f"}}], x_unknown={"a": 1})
    g = parse_task_graph({"tasks": [{"id": "a", "request": req}]}, 10)
    assert g.by_id["a"].request is req
    assert filled(g.by_id["a"], {}) == req


def test_unknown_field_is_refused_with_the_known_ones() -> None:
    with pytest.raises(TaskGraphError, match="unknown field \"timeout\" \\(a task has depends_on, id, request, "
                                             "upstream_path\\)"):
        parse_task_graph({"tasks": [task("a", timeout=5)]}, 10)


BAD_BODIES = [
    # (body, max_tasks, expected message fragment)
    ([1, 2], 10, "the body must be a JSON object with a 'tasks' list, not a list"),
    ("tasks", 10, "not a string"),
    (None, 10, "not null"),
    ({}, 10, "the body has no 'tasks' list"),
    ({"task": []}, 10, "the body has no 'tasks' list"),
    ({"tasks": {"a": {}}}, 10, "'tasks' must be a list, not an object"),
    ({"tasks": [task("a"), task("b"), task("c")]}, 2, "3 tasks is more than the maximum of 2 per run"),
    ({"tasks": ["a"]}, 10, "tasks[0] must be an object, not a string"),
    ({"tasks": [{"request": chat("x")}]}, 10, "tasks[0] has no 'id'"),
    ({"tasks": [task("a"), {"id": "", "request": chat("x")}]}, 10, "tasks[1]: 'id' must be a non-empty string, not \"\""),
    ({"tasks": [{"id": 7, "request": chat("x")}]}, 10, "tasks[0]: 'id' must be a non-empty string, not 7"),
    ({"tasks": [{"id": None, "request": chat("x")}]}, 10, "'id' must be a non-empty string, not null"),
    ({"tasks": [{"id": "a b", "request": chat("x")}]}, 10, "no whitespace"),
    ({"tasks": [{"id": "a{b}", "request": chat("x")}]}, 10, "no whitespace, '{' or '}'"),
    ({"tasks": [{"id": "x" * 129, "request": chat("x")}]}, 10, "at most 128 characters"),
    ({"tasks": [{"id": "a"}]}, 10, "task 'a' has no 'request'"),
    ({"tasks": [{"id": "a", "request": "hello"}]}, 10, "task 'a': 'request' must be an object, not a string"),
    ({"tasks": [{"id": "a", "request": {"model": "m"}}]}, 10, "task 'a': request has no 'messages'"),
    ({"tasks": [{"id": "a", "request": {"messages": "hi"}}]}, 10,
     "task 'a': request.messages must be a list, not a string"),
    ({"tasks": [{"id": "a", "request": chat("x", stream=True)}]}, 10, "task 'a': request.stream must be false or absent"),
    ({"tasks": [task("a", deps="b")]}, 10, "task 'a': 'depends_on' must be a list of task ids (strings), not \"b\""),
    ({"tasks": [task("a", deps=[1])]}, 10, "'depends_on' must be a list of task ids (strings), not [1]"),
    ({"tasks": [task("a", upstream_path="/v1/embeddings")]}, 10,
     "task 'a': upstream_path must be '/v1/chat/completions', '/v1/messages' or '/v1/responses', "
     "not \"/v1/embeddings\""),
    ({"tasks": [task("a", upstream_path=3)]}, 10, "upstream_path must be"),
    ({"tasks": [{"id": "a", "upstream_path": "/v1/responses", "request": chat("x")}]}, 10,
     "task 'a': request has no 'input'"),
    ({"tasks": [{"id": "a", "upstream_path": "/v1/responses", "request": {"input": {"text": "x"}}}]}, 10,
     "task 'a': request.input must be a list, not an object"),
    ({"tasks": [{"id": "a", "upstream_path": "/v1/responses", "request": {"input": "x", "background": True}}]}, 10,
     "task 'a': request.background must be false or absent"),
    ({"tasks": [task("a", dependsOn=["b"])]}, 10, "task 'a': unknown field \"dependsOn\""),
    ({"tasks": [task("a"), task("b"), task("a")]}, 10, "duplicate task id 'a' (tasks[0] and tasks[2])"),
    ({"tasks": [task("a", deps=["nope"])]}, 10, "task 'a' depends on unknown task 'nope'"),
    ({"tasks": [task("a", deps=["a"])]}, 10, "dependency cycle: 'a' -> 'a'"),
    ({"tasks": [task("a", deps=["b"]), task("b", deps=["c"]), task("c", deps=["a"]), task("d")]}, 10,
     "dependency cycle: 'a' -> 'b' -> 'c' -> 'a'"),
    ({"tasks": [task("x"), task("b", deps=["c", "x"]), task("c", deps=["b"])]}, 10,
     "dependency cycle: 'b' -> 'c' -> 'b'"),
    ({"tasks": [task("a"), task("b", "use {{a}}")]}, 10,
     "task 'b': placeholder {{a}} names task 'a', which is not among its dependencies (add it to depends_on)"),
    ({"tasks": [task("a", "use {{zz}}")]}, 10, "task 'a': placeholder {{zz}} names no task of this run"),
    ({"tasks": [task("a", "use {{a}}")]}, 10, "task 'a': placeholder {{a}} names the task itself"),
    ({"tasks": [task("a", "{{zz}}")]}, 10, "write {{{{zz}} for a literal '{{zz}}'"),
    ({"tasks": [task("a"), task("b"), task("c", "{{a}} and {{b}}", deps=["a"])]}, 10,
     "task 'c': placeholder {{b}} names task 'b'"),
]


@pytest.mark.parametrize("body, max_tasks, message", BAD_BODIES,
                         ids=[str(i) for i in range(len(BAD_BODIES))])
def test_parse_errors_name_the_problem(body: Any, max_tasks: int, message: str) -> None:
    with pytest.raises(TaskGraphError) as info:
        parse_task_graph(body, max_tasks)
    assert message in str(info.value), str(info.value)


def test_error_carries_task_id_and_index() -> None:
    with pytest.raises(TaskGraphError) as info:
        graph(task("a"), task("b", deps=["q"]))
    assert (info.value.task_id, info.value.index) == ("b", 1)
    assert isinstance(info.value, BadRequest) and info.value.status == 400


def test_placeholder_in_text_blocks_and_tool_results_is_checked() -> None:
    blocks = {"id": "b", "depends_on": [], "upstream_path": "/v1/messages", "request": {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "see {{a}}"}]}]}}
    with pytest.raises(TaskGraphError, match="placeholder {{a}}"):
        graph(task("a"), blocks)
    tool = {"id": "b", "request": {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "{{a}}"}]}]}]}}
    with pytest.raises(TaskGraphError, match="placeholder {{a}}"):
        graph(task("a"), tool)


def test_placeholders_elsewhere_are_not_placeholders() -> None:
    # outside messages' text (system, tool args, image urls, names) nothing is scanned
    req = {"system": "{{nope}}", "messages": [
        {"role": "user", "name": "{{nope}}", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/{{nope}}"}},
            {"type": "text", "text": "fine"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"q\": \"{{nope}}\"}"}}]},
    ]}
    g = parse_task_graph({"tasks": [{"id": "a", "request": req}]}, 10)
    assert g.by_id["a"].placeholders == frozenset()
    assert filled(g.by_id["a"], {}) == req


def test_transitive_dependency_placeholder_allowed() -> None:
    g = graph(task("a"), task("b", deps=["a"]), task("c", "{{a}} then {{b}}", deps=["b"]))
    assert g.by_id["c"].placeholders == {"a", "b"}


def test_literal_braces_need_no_escape_unless_placeholder_shaped() -> None:
    g = graph(task("a", "jinja {{ name }} and {{ a.b }} and {{ and }} and x}} and {{{{zz}}"))
    assert g.by_id["a"].placeholders == frozenset()
    body = filled(g.by_id["a"], {})
    assert body["messages"][0]["content"] == "jinja {{ name }} and {{ a.b }} and {{ and }} and x}} and {{zz}}"


# --------------------------------------------------------------------------- placeholders


def test_fill_placeholders_every_text_position() -> None:
    req = {"model": "m", "max_tokens": 10, "system": "sys {{a}}", "messages": [
        {"role": "user", "content": "A={{a}}; B={{b}}; again {{a}}; lit {{{{a}}; brace {{{a}}}"},
        {"role": "assistant", "content": [{"type": "text", "text": "[{{b}}]"},
                                          {"type": "image", "source": {"data": "{{a}}"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "tool {{a}}"},
                                     {"type": "tool_result", "tool_use_id": "u",
                                      "content": [{"type": "text", "text": "nested {{b}}"}]}]},
    ]}
    g = parse_task_graph({"tasks": [task("a"), task("b"), {"id": "c", "request": req, "depends_on": ["a", "b"]}]}, 10)
    c = g.by_id["c"]
    original = json.dumps(req, sort_keys=True)
    out = filled(c, {"a": "ALPHA {{b}}", "b": "beta"})
    assert json.dumps(req, sort_keys=True) == original  # input never modified
    m = out["messages"]
    # inserted text is not re-scanned; {{{{ is a literal {{; a third brace stays literal
    assert m[0]["content"] == "A=ALPHA {{b}}; B=beta; again ALPHA {{b}}; lit {{a}}; brace {ALPHA {{b}}}"
    assert m[1]["content"][0]["text"] == "[beta]"
    assert m[1]["content"][1] == {"type": "image", "source": {"data": "{{a}}"}}
    assert m[2]["content"][0]["content"] == "tool ALPHA {{b}}"
    assert m[2]["content"][1]["content"][0]["text"] == "nested beta"
    assert out["system"] == "sys {{a}}"  # only messages are filled
    assert out["model"] == "m" and out["max_tokens"] == 10


def test_fill_placeholders_in_responses_input() -> None:
    items = [
        {"role": "system", "content": "sys {{a}}"},
        {"role": "user", "content": [{"type": "input_text", "text": "part {{a}}"},
                                     {"type": "input_image", "image_url": "https://x/{{a}}.png"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "said {{b}}"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"q\": \"{{a}}\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "out {{b}}"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "[{{a}}]"}]},
    ]
    tasks = [task("a"), task("b"),
             {"id": "c", "upstream_path": "/v1/responses", "depends_on": ["a", "b"],
              "request": {"model": "m", "instructions": "{{a}}", "input": items}},
             {"id": "d", "upstream_path": "/v1/responses", "depends_on": ["a"],
              "request": {"model": "m", "input": "just {{a}}, lit {{{{a}}"}}]
    g = parse_task_graph({"tasks": tasks}, 10)
    c, d = g.by_id["c"], g.by_id["d"]
    assert c.dialect == d.dialect == "responses" and c.placeholders == {"a", "b"}
    answers = {"a": "ALPHA", "b": "beta"}
    out = filled(c, answers)["input"]
    assert [item.get("content", item.get("output")) for item in out] == [
        "sys ALPHA",
        [{"type": "input_text", "text": "part ALPHA"}, {"type": "input_image", "image_url": "https://x/{{a}}.png"}],
        [{"type": "output_text", "text": "said beta"}],
        None,
        "out beta",
        [{"type": "input_text", "text": "[ALPHA]"}],
    ]
    assert out[3] == items[3]                                        # a call's arguments are not text
    assert filled(c, answers)["instructions"] == "{{a}}"             # nor is anything outside `input`
    assert filled(d, answers)["input"] == "just ALPHA, lit {{a}}"
    for t in (c, d):
        size = filled_size(t.request, t.template, {k: json_string_size(v) for k, v in answers.items()})
        assert size == len(json.dumps(filled(t, answers), ensure_ascii=False).encode())
    with pytest.raises(TaskGraphError, match="placeholder {{a}}"):
        graph({"id": "e", "upstream_path": "/v1/responses", "request": {"input": "{{a}}"}}, task("a"))


def test_answer_text_every_dialect() -> None:
    oa, an = get_dialect("openai"), get_dialect("anthropic")
    assert oa.answer_text(openai_answer("hello")) == "hello"
    assert oa.answer_text({"choices": [{"message": {"content": None, "tool_calls": []}}]}) == ""
    assert oa.answer_text({"choices": [{"message": {"content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]}}]}) == "ab"
    assert oa.answer_text({"choices": []}) == ""
    assert an.answer_text(anthropic_answer("one ", "two")) == "one two"
    assert an.answer_text({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}},
                                       {"type": "text", "text": "x"}]}) == "x"
    rs = get_dialect("responses")
    assert rs.answer_text({"output": [{"type": "reasoning", "summary": []},
                                      {"type": "message", "role": "assistant",
                                       "content": [{"type": "output_text", "text": "r1"},
                                                   {"type": "refusal", "refusal": "no"},
                                                   {"type": "output_text", "text": "r2"}]}]}) == "r1r2"
    for dialect in (oa, an, rs):
        assert dialect.answer_text(None) == "" and dialect.answer_text("str") == "" and dialect.answer_text({}) == ""


def test_task_answer_from_http() -> None:
    a = TaskAnswer.from_http(200, json.dumps(openai_answer("x")).encode(),
                             {"x-ctxwarden-tokens-before": "120", "x-ctxwarden-tokens-after": "80",
                              "x-ctxwarden-cache": "hit"})
    assert (a.status, a.tokens_before, a.tokens_after, a.cache) == (200, 120, 80, "hit")
    assert get_dialect("openai").answer_text(a.body) == "x"
    b = TaskAnswer.from_http(502, b"<html>bad gateway</html>")
    assert b.body is None and b.tokens_before is None


# --------------------------------------------------------------------------- running


async def test_independent_tasks_run_in_parallel_capped_by_max_workers() -> None:
    g = graph(*(task(f"t{i}") for i in range(12)))
    rec = Recorder(default=0.03)
    results = await run_task_graph(g, rec, max_workers=4, task_timeout=5)
    assert rec.max_in_flight == 4  # parallel, and capped
    assert [r.id for r in results] == g.ids
    assert all(r.status == "ok" and r.http_status == 200 for r in results)
    # ready tasks start in input order
    assert [tid for kind, tid in rec.events if kind == "start"] == g.ids


async def test_max_workers_one_is_sequential() -> None:
    g = graph(*(task(f"t{i}") for i in range(5)))
    rec = Recorder(default=0.002)
    await run_task_graph(g, rec, max_workers=1, task_timeout=5)
    assert rec.max_in_flight == 1
    assert rec.events == [(k, f"t{i}") for i in range(5) for k in ("start", "end")]


async def test_dependants_start_after_dependencies_and_get_answers() -> None:
    g = graph(
        task("summary", "Combine: {{left}} | {{right}}", deps=["left", "right"]),
        task("left", "L"),
        task("right", "R", deps=["root"]),
        task("root", "root"),
    )
    rec = Recorder(delays={"left": 0.05, "root": 0.01, "right": 0.01, "summary": 0.0})
    results = await run_task_graph(g, rec, max_workers=8, task_timeout=5)
    assert [r.status for r in results] == ["ok"] * 4
    assert rec.position("start", "right") > rec.position("end", "root")
    assert rec.position("start", "summary") > rec.position("end", "left")
    assert rec.position("start", "summary") > rec.position("end", "right")
    # right runs while left still runs: ready tasks start as soon as deps end
    assert rec.position("start", "right") < rec.position("end", "left")
    assert rec.bodies["summary"]["messages"][0]["content"] == "Combine: answer of left | answer of right"
    by = {r.id: r for r in results}
    assert by["summary"].started >= max(by["left"].finished, by["right"].finished)


async def test_anthropic_answer_fills_placeholder() -> None:
    g = parse_task_graph({"tasks": [
        {"id": "a", "upstream_path": "/v1/messages", "request": chat("x", max_tokens=5)},
        {"id": "b", "depends_on": ["a"], "request": {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "prev: {{a}}"}]}]}},
    ]}, 10)
    seen: dict[str, dict] = {}

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        seen[task.id] = body
        return TaskAnswer(200, anthropic_answer("Hel", "lo") if task.id == "a" else openai_answer("ok"))

    results = await run_task_graph(g, run_one, max_workers=2, task_timeout=5)
    assert [r.status for r in results] == ["ok", "ok"]
    assert seen["b"]["messages"][0]["content"][0]["text"] == "prev: Hello"


async def test_failure_skips_dependants_and_independent_ones_finish() -> None:
    g = graph(
        task("a"),
        task("b", deps=["a"]),
        task("c", "{{b}}", deps=["b"]),
        task("d"),
        task("e", deps=["d"]),
        task("f", deps=["d", "b"]),
        task("g"),
    )
    rec = Recorder(fail={"a": RuntimeError("connection reset"), "g": 429})
    results = await run_task_graph(g, rec, max_workers=3, task_timeout=5)
    by = {r.id: r for r in results}
    assert by["a"].status == "error" and by["a"].error == "RuntimeError: connection reset"
    assert by["a"].http_status is None
    assert by["b"].status == "skipped" and by["b"].blocked_by == "a"
    assert by["b"].error == "skipped: dependency 'a' ended with status error"
    assert by["c"].status == "skipped" and by["c"].blocked_by == "a" and "(via 'b')" in by["c"].error
    assert by["f"].status == "skipped" and by["f"].blocked_by == "a"
    assert by["d"].status == by["e"].status == "ok"
    assert by["g"].status == "error" and by["g"].http_status == 429
    assert by["g"].error == "upstream answered 429: rate limited"
    assert by["g"].answer == {"error": {"message": "rate limited", "type": "requests"}}
    for tid in "bcf":
        assert by[tid].started is None and by[tid].finished is None and by[tid].duration_ms is None
        assert tid not in rec.bodies  # never sent
    assert summarize(results) | {"wall_ms": 0} == {
        "total": 7, "ok": 2, "error": 2, "timeout": 0, "skipped": 3, "wall_ms": 0}


async def test_timeout_cancels_call_and_skips_dependants() -> None:
    g = graph(task("slow"), task("after", deps=["slow"]), task("quick"))
    rec = Recorder(delays={"slow": 10.0, "quick": 0.01})
    results = await run_task_graph(g, rec, max_workers=4, task_timeout=0.1)
    by = {r.id: r for r in results}
    assert by["slow"].status == "timeout"
    assert by["slow"].error == "timed out after 0.1 s (task_timeout)"
    assert by["slow"].duration_ms >= 95  # not before its timeout
    assert rec.cancelled == ["slow"]  # the call itself was cancelled
    assert by["after"].status == "skipped" and by["after"].blocked_by == "slow"
    assert "status timeout" in by["after"].error
    assert by["quick"].status == "ok"


async def test_timeout_error_raised_by_run_one_is_an_error_not_a_timeout() -> None:
    async def run_one(task: Task, body: dict) -> TaskAnswer:
        raise TimeoutError("upstream read timed out")

    (r,) = await run_task_graph(graph(task("a")), run_one, max_workers=1, task_timeout=5)
    assert r.status == "error" and r.error == "TimeoutError: upstream read timed out"


async def test_no_timeout_when_none_or_zero() -> None:
    rec = Recorder(default=0.02)
    for limit in (None, 0):
        (r,) = await run_task_graph(graph(task("a")), rec, max_workers=1, task_timeout=limit)
        assert r.status == "ok"


async def test_bad_return_and_stray_cancellation_are_errors_not_hangs() -> None:
    async def run_one(task: Task, body: dict) -> Any:
        if task.id == "dict":
            return {"status": 200}
        raise asyncio.CancelledError()

    results = await asyncio.wait_for(
        run_task_graph(graph(task("dict"), task("cancel"), task("dep", deps=["cancel"])), run_one,
                       max_workers=2, task_timeout=5), 2)
    assert [r.status for r in results] == ["error", "error", "skipped"]
    assert "AttributeError" in results[0].error
    assert "CancelledError" in results[1].error


async def test_result_fields_and_to_dict() -> None:
    ticks = iter([100.0, 100.5, 101.75])  # run start, task start, task end

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        return TaskAnswer(200, openai_answer("x"), tokens_before=10, tokens_after=7, cache="hit")

    (r,) = await run_task_graph(graph(task("a")), run_one, max_workers=1, task_timeout=5, clock=lambda: next(ticks))
    assert isinstance(r, TaskResult) and r.ok
    assert (r.started, r.finished, r.duration_ms) == (0.5, 1.75, 1250.0)
    d = r.to_dict()
    assert set(d) == {"id", "status", "http_status", "answer", "error", "blocked_by", "started", "finished",
                      "started_at", "finished_at", "duration_ms", "tokens_before", "tokens_after", "cache"}
    assert (d["tokens_before"], d["tokens_after"], d["cache"]) == (10, 7, "hit")
    assert d["started_at"].endswith("Z") and d["started_at"] < d["finished_at"]
    json.dumps(d)


async def test_progress_and_result_callbacks() -> None:
    g = graph(task("a"), task("b", deps=["a"]), task("c"), task("d"))
    progress: list[tuple[int, int, int]] = []
    streamed: list[str] = []
    rec = Recorder(delays={"a": 0.01, "c": 0.03, "d": 0.05}, fail={"a": 500})
    await run_task_graph(g, rec, max_workers=4, task_timeout=5,
                         on_progress=lambda *a: progress.append(a), on_result=lambda r: streamed.append(r.id))
    # a failed and b was skipped in the same step
    assert progress == [(0, 4, 0), (2, 4, 2), (3, 4, 2), (4, 4, 2)]
    assert streamed == ["a", "b", "c", "d"]


async def test_broken_callbacks_do_not_break_the_run() -> None:
    def boom(*a: Any) -> None:
        raise ValueError("progress bar broke")

    results = await run_task_graph(graph(task("a"), task("b")), Recorder(default=0), max_workers=2,
                                   task_timeout=5, on_progress=boom, on_result=boom)
    assert [r.status for r in results] == ["ok", "ok"]


async def test_empty_graph() -> None:
    progress: list = []
    assert await run_task_graph(graph(), Recorder(), max_workers=2, task_timeout=1,
                                on_progress=lambda *a: progress.append(a)) == []
    assert progress == [(0, 0, 0)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
async def test_bad_max_workers(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        await run_task_graph(graph(task("a")), Recorder(), max_workers=bad, task_timeout=1)


async def test_cancelling_the_run_cancels_running_calls() -> None:
    g = graph(*(task(f"t{i}") for i in range(6)), task("after", deps=["t0"]))
    rec = Recorder(default=10.0)
    run = asyncio.create_task(run_task_graph(g, rec, max_workers=3, task_timeout=60))
    await asyncio.sleep(0.02)
    assert rec.in_flight == 3
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted(rec.cancelled) == ["t0", "t1", "t2"]
    assert rec.in_flight == 0
    await asyncio.sleep(0.02)
    assert len(rec.bodies) == 3  # nothing started after the cancel


async def test_a_run_of_thousands_of_tasks_completes() -> None:
    # the executor's per-task cost is measured by bench/parallel.py, not here
    n = 3000
    g = graph(*(task(f"t{i}") for i in range(n)), max_tasks=n)

    async def zero(task: Task, body: dict) -> TaskAnswer:
        return TaskAnswer(200, None)

    results = await run_task_graph(g, zero, max_workers=64, task_timeout=300)
    assert len(results) == n and all(r.ok for r in results)


async def test_with_gate_fanout_share_bounds_concurrency_across_runs() -> None:
    gate = UpstreamGate(10, 0.5)  # fan-out share 5
    peak = 0

    async def run_one(task: Task, body: dict) -> TaskAnswer:
        nonlocal peak
        async with gate.fanout():
            peak = max(peak, gate.snapshot()["fanout_in_use"])
            await asyncio.sleep(0.005)
            return TaskAnswer(200, openai_answer("x"))

    g1 = graph(*(task(f"a{i}") for i in range(20)))
    g2 = graph(*(task(f"b{i}") for i in range(20)))
    r1, r2 = await asyncio.gather(run_task_graph(g1, run_one, max_workers=4, task_timeout=5),
                                  run_task_graph(g2, run_one, max_workers=4, task_timeout=5))
    assert all(r.ok for r in r1 + r2)
    assert peak == 5 and gate.snapshot()["in_use"] == 0
