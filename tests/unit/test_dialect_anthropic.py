from proxy.dialects import anthropic as an
from proxy.tokens import count_request_tokens


def body():
    return {
        "model": "claude",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": [{"type": "text", "text": "running"},
                                              {"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py"},
                                         {"type": "text", "text": "and?"}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                              {"type": "text", "text": "done"}]},
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}},
                                         {"type": "tool_result", "tool_use_id": "zz",
                                          "content": [{"type": "text", "text": "out"}]},
                                         {"type": "mystery"}]},
        ],
    }


def test_to_conversation_facts():
    b = body()
    conv = an.to_conversation(b)
    ms = conv.messages
    assert ms[1].call_ids == ("t1",) and "bash" in ms[1].text
    assert ms[2].result_ids == ("t1",)
    assert ms[2].segments == ((("content", 0, "content"), "a.py"), (("content", 1, "text"), "and?"))
    assert ms[3].opaque and ms[3].segments == ()      # thinking: never edited
    assert ms[4].unknown                               # unknown block type
    assert ms[1].unit == ms[2].unit
    assert conv.fixed_tokens > 0
    assert conv.tokens == count_request_tokens(b, "anthropic")


def test_render_never_touches_system():
    b = body()
    conv = an.to_conversation(b)
    out = an.render(b, conv.messages[:3])
    assert out["system"] is b["system"] and list(out) == list(b)
    assert len(out["messages"]) == 3


def test_check_structure():
    ms = body()["messages"]
    assert an.check_structure(ms[:3]) == []
    assert any("in a row" in p for p in an.check_structure([ms[0], ms[0]]))
    assert any("not answered" in p for p in an.check_structure(ms[:2]))
    assert any("does not answer" in p for p in an.check_structure([ms[0], ms[3], ms[2]]))


def test_marker_roles():
    assert an.marker_role("user", "user") == "assistant"
    assert an.marker_role("assistant", "assistant") == "user"
    assert an.marker_role("user", "assistant") is None
    assert an.marker_role(None, "assistant") == "user"
