from ctxwarden.dialects import anthropic as an, dialect_for, request_tokens
from ctxwarden.tokens import DEFAULT_ENCODING


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


def test_parse_message_facts():
    b = body()
    ms = [an.parse_message(i, m, DEFAULT_ENCODING) for i, m in enumerate(b["messages"])]
    assert ms[1].call_ids == ("t1",) and "bash" in ms[1].text
    assert ms[2].result_ids == ("t1",)
    assert ms[2].segments == ((("content", 0, "content"), "a.py"), (("content", 1, "text"), "and?"))
    assert ms[3].opaque and ms[3].segments == ()      # thinking: never edited
    assert ms[4].unknown                               # unknown block type
    assert an.fixed_tokens(b, DEFAULT_ENCODING) > 0
    assert an.fixed_tokens(b, DEFAULT_ENCODING) + sum(m.tokens for m in ms) == request_tokens(b, an, DEFAULT_ENCODING)


def test_wire_facts():
    assert dialect_for("/v1/messages/batches", {}) is an
    assert dialect_for("/v1/models", {"anthropic-version": "2023-06-01"}) is an
    assert an.error_body(529, "busy")["error"]["type"] == "overloaded_error"
    assert an.error_body(413, "big")["error"]["type"] == "request_too_large"
    assert an.error_body(408, "late")["error"]["type"] == "invalid_request_error"
    assert an.stream_error_event("gone").startswith(b"event: error\ndata: {")
    assert an.credential_headers("k") == [(b"x-api-key", b"k")]
    b = body()
    assert an.opening(b) == (b["system"], "task") and an.system_messages(b["messages"]) == []


def test_check_structure():
    ms = body()["messages"]
    assert an.check_structure(ms[:3]) == []
    # consecutive messages of one role are one turn, as the API combines them
    assert an.check_structure([ms[0], ms[0]]) == []
    assert an.check_structure([ms[0], ms[1], ms[2], {"role": "user", "content": "more"}]) == []
    assert any("not answered" in p for p in an.check_structure(ms[:2]))
    assert any("does not answer" in p for p in an.check_structure([ms[0], ms[3], ms[2]]))
    words_first = {"role": "user", "content": [{"type": "text", "text": "first"}, ms[2]["content"][0]]}
    assert any("must open the user turn" in p for p in an.check_structure([ms[0], ms[1], words_first]))
    assert any("without a tool_use" in p for p in an.check_structure([ms[2]]))
    assert any("unknown role" in p for p in an.check_structure([ms[0], {"role": "system", "content": "x"}]))
    assert an.check_structure("nope") == ["messages is not a list"]


NOTE = {"role": "user", "content": "[ctxwarden: note]"}


def test_join_turns_after_a_user_turn():
    ms = body()["messages"][:3]
    out = an.join_turns(ms + [NOTE], {3})
    assert len(out) == 3 and out[:2] == ms[:2]
    assert out[2]["content"] == ms[2]["content"] + [{"type": "text", "text": "[ctxwarden: note]"}]
    assert an.check_structure(out) == []
    assert ms[2]["content"][-1] == {"type": "text", "text": "and?"}, "the input is not modified"


def test_join_turns_before_the_next_user_turn():
    assistant = {"role": "assistant", "content": "ok"}
    ms = [assistant, NOTE, {"role": "user", "content": "next"}]
    out = an.join_turns(ms, {1})
    assert out == [assistant, {"role": "user", "content": [{"type": "text", "text": "[ctxwarden: note]"},
                                                           {"type": "text", "text": "next"}]}]


def test_join_turns_after_the_task():
    ms = body()["messages"][:3]
    out = an.join_turns([ms[0], NOTE, ms[1], ms[2]], {1})
    assert out[0]["content"] == [{"type": "text", "text": "task"}, {"type": "text", "text": "[ctxwarden: note]"}]
    assert an.check_structure(out) == []


def test_join_turns_alone():
    assistant = {"role": "assistant", "content": "ok"}
    assert an.join_turns([assistant, NOTE], {1}) == [assistant, NOTE]
