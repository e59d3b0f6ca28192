import pytest

from ctxwarden.dialects import dialect_for, get_dialect, openai as oa, request_tokens
from ctxwarden.dialects.base import with_segments
from ctxwarden.tokens import DEFAULT_ENCODING


def body():
    return {
        "model": "gpt-4o",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}},
                {"id": "b", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"pwd\"}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "x.py"},
            {"role": "tool", "tool_call_id": "b", "content": "/repo"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "wizard", "content": "??"},
        ],
        "stream": True,
    }


def _parsed(b: dict) -> list:
    return [oa.parse_message(i, m, DEFAULT_ENCODING) for i, m in enumerate(b["messages"])]


def test_parse_message_facts():
    b = body()
    ms = _parsed(b)
    assert [m.role for m in ms] == ["system", "user", "assistant", "tool", "tool", "user", "wizard"]
    assert ms[0].segments == ((("content",), "sys"),)
    assert ms[2].call_ids == ("a", "b") and "bash" in ms[2].text
    assert ms[3].result_ids == ("a",) and ms[4].result_ids == ("b",)
    assert ms[5].opaque and ms[5].segments == ((("content", 0, "text"), "look"),)
    assert ms[6].unknown and ms[6].segments == ()
    assert oa.fixed_tokens(b, DEFAULT_ENCODING) + sum(m.tokens for m in ms) == request_tokens(b, oa, DEFAULT_ENCODING)
    assert all(m.wire is w for m, w in zip(ms, b["messages"]))


def test_registry_picks_the_dialect_by_name_path_and_headers():
    assert get_dialect("openai") is oa
    with pytest.raises(KeyError):
        get_dialect("gemini")
    assert dialect_for("/v1/chat/completions", {"anthropic-version": "2023-06-01"}) is oa
    assert dialect_for("/v1/models", {}) is oa


def test_wire_facts():
    assert oa.error_body(429, "slow down")["error"]["type"] == "requests"
    assert oa.error_body(404, "no")["error"]["type"] == "invalid_request_error"
    assert oa.error_body(502, "down")["error"]["type"] == "api_error"
    assert oa.stream_error_event("gone").startswith(b"data: {")
    assert oa.credential_headers("k") == [(b"authorization", b"Bearer k")]
    b = body()
    assert oa.opening(b) == (["sys"], "task")
    assert oa.system_messages(b["messages"]) == [b["messages"][0]]


def test_join_turns_keeps_messages_as_they_are():
    ms = body()["messages"][:6]
    assert oa.join_turns(ms, {1, 5}) is ms


def test_with_segments_copies_only_the_path():
    b = body()
    m = _parsed(b)[5]
    new = with_segments(m, ("LOOK",), lambda wire: oa.message_tokens(wire, DEFAULT_ENCODING))
    assert new.wire["content"][0]["text"] == "LOOK"
    assert b["messages"][5]["content"][0]["text"] == "look"  # original untouched
    assert new.wire["content"][1] is b["messages"][5]["content"][1]


def test_check_structure():
    ok = body()["messages"][:6]
    assert oa.check_structure(ok) == []
    orphan_result = [ok[0], ok[1], ok[3]]
    assert oa.check_structure(orphan_result)
    missing_result = ok[:4]
    assert any("without results" in p for p in oa.check_structure(missing_result))
    assert oa.check_structure([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == []

