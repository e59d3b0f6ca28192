"""The Responses API through the proxy, driven by the official openai SDK's
``client.responses``: plain and streamed answers, function calls, the
response cache, a long agent conversation compacted within the budget,
``previous_response_id`` passed through untouched, and bad input refused."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from ctxwarden.dialects import get_dialect, request_tokens
from tests.fake_upstream import expected_reply

from ._helpers import OPENAI_MODEL, assert_openai_error, assert_token_headers, served, small_budget_config

BUDGET = 4000
INSTRUCTIONS = "You are a careful coding agent. Read files with the read_file tool before changing them."
TASK = "Fix the failing test tests/test_retry.py::test_limit in src/app/retry.py"
TOOLS = [{"type": "function", "name": "read_file", "description": "Read a file",
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]
RESPONSES = get_dialect("responses")


def _proxy(upstream_url: str):
    """A proxy with a small budget on its own loopback port: (base URL, the app)."""
    return served(small_budget_config(upstream_url, BUDGET))


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-responses", max_retries=0, timeout=15)


# ------------------------------------------------------------------ plain, streamed, tools

def test_plain_answer(openai_client, upstream):
    raw = openai_client.responses.with_raw_response.create(
        model=OPENAI_MODEL, instructions="You are terse.", input="What is the capital of France?")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == expected_reply("What is the capital of France?")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert_token_headers(raw.headers)
    assert raw.headers["x-ctxwarden-rewrite"] == "unchanged"
    assert len(upstream.recorder) == 1
    sent = upstream.recorder.last
    assert sent.path == "/v1/responses" and sent.header("authorization") == "Bearer sk-test"
    assert sent.json() == {"model": OPENAI_MODEL, "instructions": "You are terse.",
                           "input": "What is the capital of France?"}


def test_streamed_answer(openai_client, upstream):
    stream = openai_client.responses.create(model=OPENAI_MODEL, input=[{"role": "user", "content": "stream me"}],
                                            stream=True, extra_headers={"x-fake-chunks": "6"})
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected_reply("", 6) == events[-1].response.output_text
    assert upstream.recorder.wait_for(lambda rec: rec.streams_completed == 1), upstream.recorder


def test_stream_helper_and_a_function_call_round_trip(openai_client, upstream):
    history: list = [{"role": "user", "content": "Please call a tool for the weather"}]
    with openai_client.responses.stream(model=OPENAI_MODEL, input=history, tools=TOOLS) as stream:
        called = stream.get_final_response()
    call = called.output[0]
    assert call.type == "function_call" and call.name == "read_file" and json.loads(call.arguments) == {"path": "fake"}
    history += [item.model_dump(exclude_none=True) for item in called.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"})
    answered = openai_client.responses.create(model=OPENAI_MODEL, input=history, tools=TOOLS)
    assert answered.output_text == expected_reply("tool result sunny, 21 C")
    assert upstream.recorder.last.json()["input"] == history


# ------------------------------------------------------------------ the response cache

def test_cached_answers_are_replayed_plain_and_streamed(openai_client, upstream):
    ask = {"model": OPENAI_MODEL, "input": "a deterministic question for the cache", "temperature": 0}
    first = openai_client.responses.with_raw_response.create(**ask)
    again = openai_client.responses.with_raw_response.create(**ask)
    assert first.headers["x-ctxwarden-cache"] == "miss" and again.headers["x-ctxwarden-cache"] == "hit"
    assert again.parse().model_dump() == first.parse().model_dump()
    with openai_client.responses.stream(**ask) as stream:
        kinds = [event.type for event in stream]
        replayed = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert replayed.output_text == first.parse().output_text
    assert len(upstream.recorder) == 1, "the hits were answered from the cache"


def test_a_streamed_answer_is_stored_and_replayed_as_json(openai_client, upstream):
    ask = {"model": OPENAI_MODEL, "input": "stream first, then ask plainly", "temperature": 0}
    streamed = openai_client.responses.create(**ask, stream=True)
    completed = [event for event in streamed if event.type == "response.completed"][0].response
    plain = openai_client.responses.with_raw_response.create(**ask)
    assert plain.headers["x-ctxwarden-cache"] == "hit"
    assert plain.parse().model_dump() == completed.model_dump()
    assert len(upstream.recorder) == 1


# ------------------------------------------------------------------ a long conversation, compacted

def _tool_output(i: int) -> str:
    lines = [f"# src/app/module_{i}.py"]
    lines += [f"def handler_{i}_{n}(request, retries={n % 5}):  # answers status {200 + n} for /r{i}/{n}"
              for n in range(30)]
    return "\n".join(lines)


def _history(turns: int) -> list[list[dict]]:
    """The input of each turn of an agent conversation: reasoning, a call and
    its output per step, a user message now and then; each turn the whole history."""
    items: list[dict] = [{"role": "user", "content": TASK}]
    out = []
    for i in range(turns):
        items.append({"id": f"rs_{i}", "type": "reasoning", "encrypted_content": f"gAAAA{i:04d}" + "Zm9v" * 40,
                      "summary": [{"type": "summary_text", "text": f"Look at src/app/module_{i}.py next."}]})
        items.append({"id": f"fc_{i}", "type": "function_call", "call_id": f"call_{i}", "name": "read_file",
                      "arguments": json.dumps({"path": f"src/app/module_{i}.py"}), "status": "completed"})
        items.append({"type": "function_call_output", "call_id": f"call_{i}", "output": _tool_output(i)})
        if i % 6 == 5:
            items.append({"id": f"msg_{i}", "type": "message", "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": f"Step {i} read.", "annotations": []}]})
            items.append({"role": "user", "content": [{"type": "input_text", "text": f"Now the views of step {i}."}]})
        out.append(list(items))
    return out


def _check_sent(sent: dict, original: list[dict]) -> None:
    """What the upstream received keeps every rule of the rewrite."""
    assert sent["instructions"] == INSTRUCTIONS and sent["tools"] == TOOLS
    latest_user = [item for item in original if item.get("role") == "user"][-1]
    assert latest_user in sent["input"], "the latest user input is sent as it was"
    assert request_tokens(sent, RESPONSES, "o200k_base") <= BUDGET
    items = sent["input"]
    calls = {item["call_id"] for item in items if item.get("type") == "function_call"}
    outputs = {item["call_id"] for item in items if item.get("type") == "function_call_output"}
    assert calls == outputs, "every function_call is sent with its output, and only with it"
    for at, item in enumerate(items):
        if item.get("type") == "reasoning":
            assert item in original, "reasoning items go back unchanged"
            follows = original[original.index(item) + 1]
            assert items[at + 1] == follows, "a reasoning item goes with the item that followed it"


def test_a_long_conversation_with_function_calls_is_compacted_within_the_budget(fake_upstream_server, upstream):
    decisions = []
    with _proxy(fake_upstream_server.url) as (url, _app), _client(url) as client:
        for history in _history(24):
            raw = client.responses.with_raw_response.create(model=OPENAI_MODEL, instructions=INSTRUCTIONS,
                                                            input=history, tools=TOOLS, store=False)
            assert raw.parse().status == "completed"
            decisions.append(raw.headers["x-ctxwarden-rewrite"])
            before, after = assert_token_headers(raw.headers)
            sent = upstream.recorder.last.json()
            if decisions[-1] in ("append", "compact"):
                assert after <= BUDGET and before > 0.7 * BUDGET
                assert sent["prompt_cache_key"].startswith("ctxw-")
            _check_sent(sent, history)
    assert "compact" in decisions and "append" in decisions, decisions
    assert decisions[0] == "unchanged"


# ------------------------------------------------------------------ server-held history, bad input

def test_previous_response_id_passes_through_byte_for_byte(fake_upstream_server, upstream):
    outputs = [{"type": "function_call_output", "call_id": f"call_{i}", "output": _tool_output(i)} for i in range(12)]
    body = json.dumps({"model": OPENAI_MODEL, "previous_response_id": "resp_earlier", "input": outputs,
                       "store": True, "unknown_field": {"kept": [1, 2]}}, indent=1).encode()
    with _proxy(fake_upstream_server.url) as (url, app):
        answer = httpx.post(url + "/v1/responses", content=body, timeout=15,
                            headers={"authorization": "Bearer sk-responses", "content-type": "application/json"})
        backend = app.state.proxy.cache.backend
        states = [key for key in list(backend._cache.keys()) if key.startswith("conv:")]
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ctxwarden-rewrite"] == "unchanged"
    assert "previous_response_id" in answer.headers["x-ctxwarden-reason"]
    assert int(answer.headers["x-ctxwarden-tokens-before"]) > BUDGET
    assert upstream.recorder.last.body == body
    assert states == [], "no conversation state for a history the server holds"


@pytest.mark.parametrize("body, where", [
    (b"{not json", "JSON"),
    (json.dumps({"input": "no model"}).encode(), "model"),
    (json.dumps({"model": OPENAI_MODEL, "input": 42}).encode(), "input"),
    (json.dumps({"model": OPENAI_MODEL, "input": [{"role": "robot", "content": "hi"}]}).encode(), "role"),
    (json.dumps({"model": OPENAI_MODEL, "input": [{"type": "function_call", "call_id": "c"}]}).encode(), "name"),
    (json.dumps({"model": OPENAI_MODEL, "input": ["just a string"]}).encode(), "input[0]"),
])
def test_bad_input_is_a_400_in_openai_shape_and_nothing_is_sent(http, upstream, body, where):
    answer = http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(answer, 400)
    assert where in error["message"] and error["type"] == "invalid_request_error"
    assert len(upstream.recorder) == 0


def test_the_sdk_raises_bad_request_for_a_malformed_item(openai_client, upstream):
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model=OPENAI_MODEL, input=[{"type": "function_call_output", "call_id": 7,
                                                                   "output": "x"}])
    assert len(upstream.recorder) == 0


def test_a_stream_broken_off_ends_with_the_apis_error_event(openai_client, upstream):
    stream = openai_client.responses.create(model=OPENAI_MODEL, input="break me", stream=True,
                                            extra_headers={"x-fake-fault": "reset-mid-stream"})
    events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type == "error" and events[-1].code == "server_error" and events[-1].message
    with pytest.raises(RuntimeError, match="response.completed"):
        with openai_client.responses.stream(model=OPENAI_MODEL, input="break me too",
                                            extra_headers={"x-fake-fault": "reset-mid-stream"}) as helper:
            helper.get_final_response()


def test_other_responses_paths_are_forwarded_to_the_openai_upstream(openai_client, upstream):
    answer = openai_client.get("/responses/resp_123/input_items", cast_to=object, options={"params": {"limit": 2}})
    assert answer["echo"] is True and answer["path"] == "/v1/responses/resp_123/input_items"
    assert answer["query"] == "limit=2" and answer["upstream"] == upstream.fake.name
