"""The strict wire validators: one valid and one invalid example per rule."""
from __future__ import annotations

import copy

import pytest

from tests.strict_wire import anthropic_messages_problems, chat_problems, describe, openai_chat_problems

# ---------------------------------------------------------------- OpenAI


def oa(*messages: dict) -> dict:
    return {"model": "gpt-4o", "messages": list(messages)}


SYSTEM = {"role": "system", "content": "You are an agent."}
USER = {"role": "user", "content": "Fix the bug."}


def call(*ids: str, content: str | None = None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}} for i in ids]}


def tool(call_id: str, content: str = "ok") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def test_openai_valid_agent_conversation() -> None:
    body = oa(SYSTEM, USER, call("a", "b"), tool("a"), tool("b"), {"role": "assistant", "content": "Done."}, USER)
    assert openai_chat_problems(body) == []


def test_openai_consecutive_user_messages_are_allowed() -> None:
    assert openai_chat_problems(oa(SYSTEM, USER, USER, {"role": "user", "content": "again"})) == []


def test_openai_developer_and_function_roles_are_known() -> None:
    body = oa({"role": "developer", "content": "rules"}, USER,
              {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
              {"role": "function", "name": "f", "content": "42"})
    assert openai_chat_problems(body) == []


@pytest.mark.parametrize("messages", [[], None, "hello"])
def test_openai_messages_must_be_a_non_empty_list(messages: object) -> None:
    problems = openai_chat_problems({"model": "m", "messages": messages})
    assert problems == ["messages: must be a non-empty array"]


def test_openai_model_is_required() -> None:
    assert openai_chat_problems({"messages": [USER]}) == ["model: a model is required"]


def test_openai_unknown_role() -> None:
    problems = openai_chat_problems(oa(USER, {"role": "critic", "content": "no"}))
    assert len(problems) == 1 and "messages[1]: unknown role 'critic'" in problems[0]


def test_openai_message_must_be_an_object() -> None:
    assert "messages[0]: unknown role None" in openai_chat_problems(oa("hello"))  # type: ignore[arg-type]


def test_openai_unanswered_tool_call_before_a_user_message() -> None:
    problems = openai_chat_problems(oa(USER, call("a", "b"), tool("a"), USER))
    assert len(problems) == 1
    assert "messages[3]" in problems[0] and "missing: b" in problems[0]


def test_openai_unanswered_tool_call_at_the_end() -> None:
    problems = openai_chat_problems(oa(USER, call("a")))
    assert len(problems) == 1 and "missing: a" in problems[0]


def test_openai_tool_result_after_an_intervening_message_is_orphaned() -> None:
    problems = openai_chat_problems(oa(USER, call("a"), {"role": "assistant", "content": "hm"}, tool("a")))
    assert any("messages[2]" in p and "missing: a" in p for p in problems)
    assert any("messages[3]" in p and "must be a response" in p for p in problems)


def test_openai_tool_message_without_a_pending_call() -> None:
    problems = openai_chat_problems(oa(USER, tool("x")))
    assert problems == ["messages[1]: messages with role 'tool' must be a response to a preceding message with "
                        "'tool_calls' ('x' is not pending)"]


def test_openai_tool_message_answering_twice() -> None:
    problems = openai_chat_problems(oa(USER, call("a"), tool("a"), tool("a")))
    assert len(problems) == 1 and "messages[3]" in problems[0]


def test_openai_tool_message_needs_a_tool_call_id() -> None:
    problems = openai_chat_problems(oa(USER, call("a"), {"role": "tool", "content": "x"}, tool("a")))
    assert problems == ["messages[2]: a tool message needs a string tool_call_id"]


def test_openai_null_content_only_for_assistant_with_tool_calls() -> None:
    assert openai_chat_problems(oa(USER, call("a"), tool("a"))) == []
    problems = openai_chat_problems(oa(USER, {"role": "assistant", "content": None}))
    assert len(problems) == 1 and "content is required" in problems[0]
    problems = openai_chat_problems(oa({"role": "user", "content": None}))
    assert len(problems) == 1 and "messages[0]" in problems[0]
    problems = openai_chat_problems(oa({"role": "user"}))
    assert len(problems) == 1 and "content is required" in problems[0]


def test_openai_content_parts() -> None:
    user_parts = {"role": "user", "content": [{"type": "text", "text": "look"},
                                              {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    assistant_parts = {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}
    assert openai_chat_problems(oa(user_parts, assistant_parts)) == []
    problems = openai_chat_problems(oa({"role": "system", "content": [{"type": "image_url", "image_url": {}}]}))
    assert problems == ["messages[0].content[0]: content part type 'image_url' is not allowed in a system message"]
    problems = openai_chat_problems(oa({"role": "user", "content": [{"type": "text"}]}))
    assert problems == ["messages[0].content[0]: text part without a string 'text'"]
    problems = openai_chat_problems(oa({"role": "user", "content": [{"type": "video"}]}))
    assert len(problems) == 1 and "'video'" in problems[0]


def test_openai_empty_content_array_and_wrong_type() -> None:
    assert openai_chat_problems(oa({"role": "user", "content": []})) == [
        "messages[0]: content is an empty array (minimum length 1)"]
    assert openai_chat_problems(oa({"role": "user", "content": 5})) == [
        "messages[0]: content must be a string or an array of content parts"]


def test_openai_tool_calls_shape() -> None:
    problems = openai_chat_problems(oa(USER, {"role": "assistant", "content": "x", "tool_calls": []}))
    assert problems == ["messages[1]: tool_calls must be a non-empty array"]
    bad = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "a", "type": "function", "function": {"name": "bash", "arguments": {}}}]}
    problems = openai_chat_problems(oa(USER, bad, tool("a")))
    assert problems == ["messages[1].tool_calls[0]: function needs a string name and a string arguments"]
    no_id = {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}
    assert openai_chat_problems(oa(USER, no_id)) == ["messages[1].tool_calls[0]: a tool call needs a string id"]


# ---------------------------------------------------------------- Anthropic


def an(*messages: dict, **extra: object) -> dict:
    body: dict = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "You are an agent.",
                  "messages": list(messages)}
    body.update(extra)
    return body


def text(t: str, **extra: object) -> dict:
    return {"type": "text", "text": t, **extra}


def user(*blocks: dict | str) -> dict:
    return {"role": "user", "content": blocks[0] if len(blocks) == 1 and isinstance(blocks[0], str)
            else list(blocks)}


def assistant(*blocks: dict | str) -> dict:
    return {"role": "assistant", "content": blocks[0] if len(blocks) == 1 and isinstance(blocks[0], str)
            else list(blocks)}


def use(i: str) -> dict:
    return {"type": "tool_use", "id": i, "name": "bash", "input": {"command": "ls"}}


def result(i: str, content: object = "ok") -> dict:
    return {"type": "tool_result", "tool_use_id": i, "content": content}


def test_anthropic_valid_agent_conversation() -> None:
    body = an(user("Fix the bug."), assistant(text("Looking."), use("a"), use("b")),
              user(result("a"), result("b", [text("file.py")]), text("and hurry")), assistant("Done."),
              user("thanks"))
    assert anthropic_messages_problems(body) == []


def test_anthropic_consecutive_same_role_messages_are_combined() -> None:
    body = an(user("one"), user("two"), assistant("a"), assistant("b"), user("three"))
    assert anthropic_messages_problems(body) == []


def test_anthropic_tool_results_split_over_consecutive_user_messages() -> None:
    body = an(user("go"), assistant(use("a"), use("b")), user(result("a")), user(result("b"), text("next")))
    assert anthropic_messages_problems(body) == []


def test_anthropic_max_tokens_and_model_are_required() -> None:
    body = an(user("hi"))
    del body["max_tokens"], body["model"]
    assert anthropic_messages_problems(body) == ["model: Field required",
                                                 "max_tokens: Field required (a positive integer)"]
    assert anthropic_messages_problems(an(user("hi"), max_tokens=0)) == [
        "max_tokens: Field required (a positive integer)"]


def test_anthropic_messages_required() -> None:
    assert anthropic_messages_problems(an()) == ["messages: at least one message is required"]


def test_anthropic_system_role_is_rejected() -> None:
    problems = anthropic_messages_problems(an({"role": "system", "content": "x"}, user("hi")))
    assert len(problems) == 1 and "unexpected role 'system'" in problems[0] and "top-level" in problems[0]


def test_anthropic_tool_role_is_rejected() -> None:
    problems = anthropic_messages_problems(an(user("hi"), {"role": "tool", "content": "x"}))
    assert problems == ["messages.1: unexpected role 'tool'"]


def test_anthropic_first_message_must_be_user() -> None:
    problems = anthropic_messages_problems(an(assistant("hello"), user("hi")))
    assert problems == ['messages: first message must use the "user" role']


def test_anthropic_tool_use_without_result_in_next_turn() -> None:
    problems = anthropic_messages_problems(an(user("go"), assistant(use("a"), use("b")), user(result("a"))))
    assert len(problems) == 1 and "messages.2" in problems[0] and "b" in problems[0].split("after:")[1]


def test_anthropic_tool_use_answered_only_after_text_is_rejected() -> None:
    body = an(user("go"), assistant(use("a")), user(text("first"), result("a")))
    problems = anthropic_messages_problems(body)
    assert len(problems) == 1 and "at the start of the next message" in problems[0]


def test_anthropic_text_user_message_before_tool_results_is_rejected() -> None:
    # combined, the user turn starts with text: the API rejects it
    body = an(user("go"), assistant(use("a")), user("wait"), user(result("a")))
    problems = anthropic_messages_problems(body)
    assert len(problems) == 1 and "without `tool_result` blocks" in problems[0]


def test_anthropic_tool_result_for_an_unknown_id() -> None:
    body = an(user("go"), assistant(use("a")), user(result("a"), result("zzz")))
    problems = anthropic_messages_problems(body)
    assert len(problems) == 1 and "unexpected `tool_use_id`" in problems[0] and "zzz" in problems[0]


def test_anthropic_tool_result_answering_an_older_turn() -> None:
    body = an(user("go"), assistant(use("a")), user(result("a")), assistant("ok"), user(result("a")))
    problems = anthropic_messages_problems(body)
    assert len(problems) == 1 and "messages.4" in problems[0] and "unexpected" in problems[0]


def test_anthropic_request_ending_with_unanswered_tool_use() -> None:
    problems = anthropic_messages_problems(an(user("go"), assistant(use("a"))))
    assert len(problems) == 1 and "a" in problems[0]


def test_anthropic_duplicate_tool_use_ids() -> None:
    body = an(user("go"), assistant(use("a")), user(result("a")), assistant(use("a")), user(result("a")))
    problems = anthropic_messages_problems(body)
    assert problems == ["messages.3: `tool_use` ids must be unique: a"]


def test_anthropic_blocks_in_the_wrong_role() -> None:
    problems = anthropic_messages_problems(an(user(use("a")), assistant("x")))
    assert any("only allowed in assistant messages" in p for p in problems)
    problems = anthropic_messages_problems(an(user("go"), assistant(result("a"))))
    assert any("only allowed in user messages" in p for p in problems)


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_anthropic_text_blocks_must_contain_non_whitespace_text(bad: str) -> None:
    assert anthropic_messages_problems(an(user(text("ok"), text("fine")))) == []
    problems = anthropic_messages_problems(an(user(text("ok"), text(bad))))
    assert problems == ["messages.0.content[1]: text content blocks must contain non-whitespace text"]
    problems = anthropic_messages_problems(an(user(result("a", [text(bad)]))))
    assert any("content[0].content[0]" in p for p in problems)


def test_anthropic_content_must_be_non_empty() -> None:
    problems = anthropic_messages_problems(an(user(""), assistant("x"), user("y")))
    assert len(problems) == 1 and "messages.0: all messages must have non-empty content" in problems[0]
    problems = anthropic_messages_problems(an({"role": "user", "content": []}))
    assert len(problems) == 1 and "non-empty content" in problems[0]
    problems = anthropic_messages_problems(an({"role": "user", "content": {"text": "x"}}))
    assert problems == ["messages.0: content must be a string or an array of content blocks"]


def test_anthropic_empty_final_assistant_prefill_is_allowed() -> None:
    assert anthropic_messages_problems(an(user("hi"), assistant(""))) == []
    assert anthropic_messages_problems(an(user("hi"), {"role": "assistant", "content": []})) == []
    assert anthropic_messages_problems(an(user("hi"), assistant(""), user("again"))) != []


def test_anthropic_unknown_block_type() -> None:
    assert anthropic_messages_problems(an(user({"type": "video"}))) == [
        "messages.0.content[0]: unknown content block type 'video'"]
    server_result = {"type": "web_search_tool_result", "tool_use_id": "s", "content": []}
    body = an(user("search"), assistant({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
                                        server_result, text("found")))
    assert anthropic_messages_problems(body) == []


def test_anthropic_tool_use_shape() -> None:
    problems = anthropic_messages_problems(an(user("go"), assistant({"type": "tool_use", "id": "a", "name": "b"}),
                                              user(result("a"))))
    assert problems == ["messages.1.content[0]: tool_use needs a string id, a string name and an object input"]


EPHEMERAL = {"type": "ephemeral"}


def test_anthropic_at_most_four_cache_breakpoints() -> None:
    tools = [{"name": "bash", "description": "run", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    system = [text("You are an agent.", cache_control=EPHEMERAL)]
    messages = [user(text("a", cache_control=EPHEMERAL)), assistant("b"),
                user(text("c", cache_control=EPHEMERAL))]
    body = an(*messages, tools=tools, system=system)
    assert anthropic_messages_problems(body) == []
    fifth = copy.deepcopy(body)
    fifth["messages"] += [assistant("d"), user(text("e", cache_control=EPHEMERAL))]
    assert anthropic_messages_problems(fifth) == ["A maximum of 4 blocks with cache_control may be provided. Found 5."]


def test_anthropic_cache_breakpoints_inside_tool_results_count() -> None:
    marked = text("out", cache_control=EPHEMERAL)
    messages = [user("go"), assistant(use("a"), use("b"), use("c")),
                user(result("a", [marked]), result("b", [marked]), result("c", [marked]),
                     text("x", cache_control=EPHEMERAL), text("y", cache_control=EPHEMERAL))]
    problems = anthropic_messages_problems(an(*messages))
    assert problems == ["A maximum of 4 blocks with cache_control may be provided. Found 5."]


def test_anthropic_no_cache_control_on_thinking_blocks() -> None:
    thinking = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    assert anthropic_messages_problems(an(user("q"), assistant(thinking, text("a")), user("more"))) == []
    marked = dict(thinking, cache_control=EPHEMERAL)
    problems = anthropic_messages_problems(an(user("q"), assistant(marked, text("a")), user("more")))
    assert problems == ["messages.1.content[0].cache_control: cache_control cannot be set on thinking blocks"]
    redacted = {"type": "redacted_thinking", "data": "xx", "cache_control": EPHEMERAL}
    problems = anthropic_messages_problems(an(user("q"), assistant(redacted, text("a")), user("more")))
    assert len(problems) == 1 and "redacted_thinking" in problems[0]


def test_anthropic_system_shape() -> None:
    assert anthropic_messages_problems(an(user("x"), system=[text("rules")])) == []
    assert anthropic_messages_problems(an(user("x"), system=[text(" ")])) == [
        "system.0: text content blocks must contain non-whitespace text"]
    assert anthropic_messages_problems(an(user("x"), system=[{"type": "image"}])) == [
        "system.0: system blocks must be text blocks"]


# ---------------------------------------------------------------- helpers


def test_chat_problems_dispatches_by_dialect() -> None:
    body = oa(USER, tool("x"))
    assert chat_problems("openai", body) == openai_chat_problems(body)
    assert chat_problems("anthropic", an(user("hi"))) == []


def test_describe_limits_the_reasons() -> None:
    assert describe(["a", "b"]) == "a; b"
    assert describe(["a", "b", "c", "d", "e"], limit=2) == "a; b (+3 more)"


def test_validators_reject_non_objects() -> None:
    assert openai_chat_problems([]) == ["body must be a JSON object"]  # type: ignore[arg-type]
    assert anthropic_messages_problems("x") == ["body must be a JSON object"]  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fake upstream applies them


def test_fake_upstream_answers_400_in_the_dialect_shape() -> None:
    from starlette.testclient import TestClient

    from tests.fake_upstream import create_fake_upstream

    client = TestClient(create_fake_upstream("strict").app)
    response = client.post("/v1/chat/completions", json=oa(USER, tool("x")))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "must be a response to a preceding" in error["message"]

    response = client.post("/v1/messages", json=an(user("go"), assistant(use("a")), user("no result")))
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "`tool_use` ids were found without `tool_result` blocks" in body["error"]["message"]

    assert client.post("/v1/messages", json=an(user("hi"))).status_code == 200
    assert client.post("/v1/chat/completions", json=oa(SYSTEM, USER)).status_code == 200
