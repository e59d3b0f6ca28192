"""The Responses dialect: input grouped into messages and back, parsing,
structure, token counts, streams, and the rewrite of an agent conversation."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from ctxwarden.dialects import dialect_for, get_dialect, request_tokens
from ctxwarden.dialects.openai.tokens import TOKENS_PER_TOOL_CALL
from ctxwarden.dialects.responses.items import flatten, group
from ctxwarden.dialects.responses.tokens import item_tokens
from ctxwarden.errors import BadRequest
from ctxwarden.pipeline import RewritePlan
from ctxwarden.tokens import count_text
from tests.strict_wire import openai_responses_problems
from tests.unit.pipeline_helpers import replay

R = get_dialect("responses")
ENC = "o200k_base"


def reasoning(i):
    return {"id": f"rs_{i}", "type": "reasoning", "encrypted_content": "gAAA" + "QUJD" * 30,
            "summary": [{"type": "summary_text", "text": f"read src/mod_{i}.py"}]}


def call(i):
    return {"id": f"fc_{i}", "type": "function_call", "call_id": f"call_{i}", "name": "read_file",
            "arguments": json.dumps({"path": f"src/mod_{i}.py"})}


def output(i, lines=40):
    return {"type": "function_call_output", "call_id": f"call_{i}",
            "output": "\n".join(f"def f_{i}_{n}(x):  # returns {n * i} for case {n}" for n in range(lines))}


def agent_input(steps, lines=40):
    items = [{"role": "developer", "content": "Answer in English."}, {"role": "user", "content": "Fix src/app.py"}]
    for i in range(steps):
        items += [reasoning(i), call(i), output(i, lines)]
        if i % 5 == 4:
            items += [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"Done {i}"}]},
                      {"role": "user", "content": [{"type": "input_text", "text": f"Go on after step {i}"}]}]
    return items


def body(items, **extra):
    return {"model": "gpt-4o", "instructions": "You are a coding agent.", "input": items, **extra}


# ------------------------------------------------------------------ grouping

def test_input_is_grouped_into_messages_and_flattened_back_to_the_very_items():
    items = agent_input(5)
    messages = group(items)
    assert [m.get("role") for m in messages[:5]] == ["developer", "user", "assistant", "tool", "assistant"]
    assert messages[2]["items"] == [items[2], items[3]], "reasoning and its call form one group"
    back = flatten(messages)
    assert back == items and all(a is b for a, b in zip(back, items))


def test_a_string_input_is_one_user_message_and_other_items_are_groups_of_unknown_shape():
    assert group("hi") == [{"role": "user", "content": "hi"}]
    web = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
    messages = group([{"role": "user", "content": "x"}, web])
    assert messages[1] == {"role": "", "items": [web]}
    assert R.parse_message(1, messages[1], ENC).unknown


def test_parse_message_of_each_kind():
    items = agent_input(5)
    messages = R.conversation(body(items))
    user = R.parse_message(1, messages[1], ENC)
    assert user.role == "user" and user.segments == ((("content",), "Fix src/app.py"),)
    turn = R.parse_message(2, messages[2], ENC)
    assert turn.role == "assistant" and turn.call_ids == ("call_0",) and turn.calls == (call(0)["arguments"],)
    assert turn.segments == () and turn.opaque, "a group with reasoning is never edited"
    result = R.parse_message(3, messages[3], ENC)
    assert result.role == "tool" and result.result_ids == ("call_0",)
    assert result.segments == ((("items", 0, "output"), output(0)["output"]),)
    reply = R.parse_message(0, {"role": "assistant", "items": [items[-2]]}, ENC)
    assert reply.segments == ((("items", 0, "content", 0, "text"), "Done 4"),)
    reference = R.parse_message(0, group([{"type": "item_reference", "id": "msg_1"}])[0], ENC)
    assert reference.unknown


def test_structure_pairs_calls_and_outputs_by_call_id():
    good = agent_input(3)
    assert R.check_structure(group(good)) == []
    assert R.check_structure(group(good[:-1]))[-1].startswith("end: function calls ['call_2']")
    stray = good + [output(9)]
    assert "answers no pending function_call" in R.check_structure(group(stray))[0]
    interrupted = good[:4] + [{"role": "user", "content": "wait"}] + good[4:]
    assert "left without outputs" in R.check_structure(group(interrupted))[0]


@pytest.mark.parametrize("bad, where", [
    ({"input": 3}, "'input'"),
    ({"input": [1]}, "input[0]"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"input": "x", "instructions": ["not", "a", "string"]}, "instructions"),
])
def test_bad_bodies_are_refused_naming_the_field(bad, where):
    with pytest.raises(BadRequest, match=where.replace("[", r"\[").replace("]", r"\]")):
        R.check_body({"model": "gpt-4o", **bad})


def test_unknown_item_types_and_fields_are_not_judged():
    R.check_body(body([{"type": "web_search_call", "id": "ws"}, {"type": "item_reference", "id": "msg_1"}], x=1))


def test_requests_whose_history_the_server_holds_are_not_managed():
    assert R.unmanaged(body("hi")) == ""
    assert "previous_response_id" in R.unmanaged(body("hi", previous_response_id="resp_1"))
    assert "conversation" in R.unmanaged(body("hi", conversation="conv_1"))
    assert R.unmanaged({"model": "gpt-4o", "prompt": {"id": "pmpt_1"}})
    assert R.unmanaged(body([])) == R.unmanaged(body("")) == "the request has no input"


def test_the_dialect_owns_its_paths_and_is_served_by_the_openai_upstreams():
    assert dialect_for("/v1/responses/resp_1/input_items", {}) is R
    assert R.upstream == "openai" and R.chat_path == "/v1/responses"
    assert R.opening(body("hi")) == (["You are a coding agent."], "hi")


# ------------------------------------------------------------------ tokens

def test_token_counts():
    assert item_tokens(call(1), ENC) == TOKENS_PER_TOOL_CALL + count_text("read_file", ENC) + count_text(
        call(1)["arguments"], ENC)
    group_of_two = {"role": "assistant", "items": [reasoning(1), call(1)]}
    assert R.message_tokens(group_of_two, ENC) == item_tokens(reasoning(1), ENC) + item_tokens(call(1), ENC)
    assert item_tokens(reasoning(1), ENC) >= len(reasoning(1)["encrypted_content"]) // 4
    with_id = {"id": "msg_1", "type": "message", "status": "completed", "role": "user", "content": "hello"}
    assert item_tokens(with_id, ENC) == item_tokens({"role": "user", "content": "hello"}, ENC)
    image = {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png", "detail": "high"}]}
    assert item_tokens(image, ENC) == 3 + count_text("user", ENC) + 85
    # a known size: the part's own `detail` decides, as in the API (a 2000 x 2000 PNG: 4 tiles high, 85 low)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII5B", 13, b"IHDR", 2000, 2000, 8, 6, 0, 0, 0) + b"\0" * 4
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    sized = [{"role": "user", "content": [{"type": "input_image", "image_url": url, "detail": d}]} for d in ("high", "low")]
    assert [item_tokens(m, ENC) - 3 - count_text("user", ENC) for m in sized] == [85 + 170 * 4, 85]
    plain, instructed = body("hi"), body("hi")
    del plain["instructions"]
    assert request_tokens(instructed, R, ENC) - request_tokens(plain, R, ENC) == 3 + count_text(
        "system", ENC) + count_text("You are a coding agent.", ENC)


# ------------------------------------------------------------------ streams

ANSWER = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o",
          "output": [reasoning(7),
                     {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": "Hello", "annotations": []},
                                  {"type": "refusal", "refusal": "no"}]},
                     call(7)],
          "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                    "total_tokens": 7}}


def _events(chunks):
    out = []
    for chunk in chunks:
        head, data = chunk.decode().strip().split("\n")
        out.append((head.removeprefix("event: "), data.removeprefix("data: ")))
    return out


def test_a_replayed_answer_assembles_to_itself_with_numbered_named_events():
    events = _events(R.replay_stream(ANSWER))
    assert R.assemble_stream(events) == ANSWER
    datas = [json.loads(data) for _, data in events]
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    assert all(name == d["type"] for (name, _), d in zip(events, datas))
    kinds = [d["type"] for d in datas]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert datas[0]["response"]["output"] == [] and datas[0]["response"]["status"] == "in_progress"
    assert "response.output_text.delta" in kinds and "response.refusal.done" in kinds
    assert "response.function_call_arguments.done" in kinds and "response.reasoning_summary_text.delta" in kinds
    incomplete = {**ANSWER, "status": "incomplete"}
    assert json.loads(_events(R.replay_stream(incomplete))[-1][1])["type"] == "response.incomplete"


def test_streams_that_did_not_finish_cleanly_are_not_answers():
    events = _events(R.replay_stream(ANSWER))
    assert R.assemble_stream(events[:-1]) is None
    failed = json.dumps({"type": "response.failed", "response": {**ANSWER, "status": "failed"}})
    assert R.assemble_stream(events[:-1] + [("response.failed", failed)]) is None
    assert R.assemble_stream(events[:3] + [("error", json.dumps({"type": "error", "message": "x"}))]) is None
    assert R.stream_error_event("broken").startswith(b"event: error\ndata: ")
    assert R.answer_text(ANSWER) == "Hello"


# ------------------------------------------------------------------ the rewrite

def test_an_agent_conversation_is_compacted_with_its_groups_whole_and_the_same_bytes_from_state_or_replay():
    plan = RewritePlan(budget=3000, encoding=ENC)
    requests = []
    items = agent_input(24)
    for end in range(3, len(items) + 1):
        if items[end - 1].get("type") == "function_call_output" or items[end - 1].get("role") == "user":
            requests.append(body(items[:end], tools=[{"type": "function", "name": "read_file", "parameters": {}}]))
    turns = list(replay(requests, "responses", plan))
    decisions = [t.outcome.decision for t in turns]
    assert "compact" in decisions and "append" in decisions
    for turn in turns:
        sent = turn.outcome.body
        assert openai_responses_problems(sent) == [], "the strict validator accepts what is sent"
        assert request_tokens(sent, R, ENC) <= plan.budget or turn.outcome.decision == "unchanged"
        assert sent["instructions"] == turn.body["instructions"]
        assert [k for k in sent if k != "prompt_cache_key"] == list(turn.body)
        reasonings = [i for i in sent["input"] if i.get("type") == "reasoning"]
        assert all(r in turn.body["input"] for r in reasonings)
    last = turns[-1]
    fresh = next(replay([last.body], "responses", plan))
    assert json.dumps(fresh.outcome.body) == json.dumps(last.outcome.body), "state and replay send the same bytes"


def test_items_of_unknown_types_make_the_request_pass_through():
    plan = RewritePlan(budget=3000, encoding=ENC)
    items = agent_input(24) + [{"type": "web_search_call", "id": "ws_1", "status": "completed",
                                "action": {"type": "search", "query": "q"}},
                               {"role": "user", "content": "and now?"}]
    outcome = next(replay([body(items)], "responses", plan))
    assert outcome.outcome.decision == "passthrough" and outcome.outcome.body["input"] is items


def test_the_strict_validator_refuses_what_the_api_refuses():
    assert openai_responses_problems(body(agent_input(2))) == []
    assert "No tool output found" in openai_responses_problems(body(agent_input(2)[:-1]))[0]
    assert "No tool call found" in openai_responses_problems(body([output(3)]))[0]
    assert openai_responses_problems(body([output(3)], previous_response_id="resp_1")) == []
    alone = [{"role": "user", "content": "x"}, reasoning(1), {"role": "user", "content": "y"}]
    assert openai_responses_problems(body(alone)) == []
    assert "required following item" in openai_responses_problems(body(alone[:2]))[0]
