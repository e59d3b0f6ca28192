from proxy.prompt_cache import EPHEMERAL, count_breakpoints, mark_stable_prefix


def _body(*contents, tools=None, system=None):
    body = {"model": "claude", "messages": [{"role": r, "content": c}
                                            for r, c in zip(["user", "assistant"] * 4, contents)]}
    if tools is not None:
        body["tools"] = tools
    if system is not None:
        body["system"] = system
    return body


def test_string_content_becomes_a_marked_text_block():
    body = _body("old note", "ack", "new question")
    marked = mark_stable_prefix(body, 2)
    assert marked["messages"][1]["content"] == [{"type": "text", "text": "ack", "cache_control": EPHEMERAL}]
    assert marked["messages"][0] is body["messages"][0] and marked["messages"][2] is body["messages"][2]
    assert body["messages"][1]["content"] == "ack", "the input is not modified"


def test_last_markable_block_is_marked_and_thinking_is_skipped():
    blocks = [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "n", "input": {}},
              {"type": "thinking", "thinking": "x", "signature": "s"}]
    marked = mark_stable_prefix(_body("q", blocks, "next"), 2)
    assert marked["messages"][1]["content"][1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in marked["messages"][1]["content"][2]


def test_client_breakpoints_are_kept_and_the_limit_respected():
    marked_block = {"type": "text", "text": "s", "cache_control": EPHEMERAL}
    full = _body("q", "a", "next", tools=[{"name": "t", "cache_control": EPHEMERAL}] * 2,
                 system=[marked_block, marked_block])
    assert count_breakpoints(full) == 4
    assert mark_stable_prefix(full, 2) is full
    three = _body("q", "a", "next", system=[marked_block] * 3)
    assert count_breakpoints(mark_stable_prefix(three, 2)) == 4


def test_a_spot_the_client_marked_is_left_alone():
    body = _body("q", [{"type": "text", "text": "a", "cache_control": EPHEMERAL}], "next")
    assert mark_stable_prefix(body, 2) is body


def test_nothing_stable_nothing_marked():
    body = _body("q")
    assert mark_stable_prefix(body, 0) is body
