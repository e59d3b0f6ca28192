from ctxwarden.pricing import ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Pricing
from ctxwarden.dialects import get_dialect
from ctxwarden.dialects.anthropic.markers import EPHEMERAL, count_breakpoints, mark_stable_prefix


def add_cache_hints(body, dialect, pricing, stable_messages, conversation):
    return get_dialect(dialect).cache_hints(body, pricing, stable_messages, conversation)


def _body(*contents, tools=None, system=None):
    body = {"model": "claude", "messages": [{"role": r, "content": c}
                                            for r, c in zip(["user", "assistant"] * 4, contents)]}
    if tools is not None:
        body["tools"] = tools
    if system is not None:
        body["system"] = system
    return body


def _text(text):
    return [{"type": "text", "text": text}]


def _marked_at(body):
    return [i for i, m in enumerate(body["messages"]) if "cache_control" in str(m["content"])]


def test_the_last_block_of_the_prefix_is_marked():
    body = _body(_text("old note"), _text("ack"), _text("new question"))
    marked = mark_stable_prefix(body, 2)
    assert marked["messages"][1]["content"] == [{"type": "text", "text": "ack", "cache_control": EPHEMERAL}]
    assert marked["messages"][0] is body["messages"][0] and marked["messages"][2] is body["messages"][2]
    assert body["messages"][1]["content"] == _text("ack"), "the input is not modified"
    assert list(marked) == list(body)


def test_string_content_is_never_rewritten_into_blocks():
    # the same message must keep its bytes on the next turn, unmarked: the mark goes further back
    body = _body(_text("task"), "ack", "question")
    marked = mark_stable_prefix(body, 3)
    assert _marked_at(marked) == [0]
    assert marked["messages"][1] is body["messages"][1] and marked["messages"][2] is body["messages"][2]
    assert mark_stable_prefix(_body("task", "ack", "question"), 3) == _body("task", "ack", "question")


def test_the_mark_looks_back_at_most_lookback_messages():
    body = _body(_text("task"), "a", "b", "c", "d")
    assert _marked_at(mark_stable_prefix(body, 5, lookback=5)) == [0]
    assert mark_stable_prefix(body, 5, lookback=4) is body


def test_last_markable_block_is_marked_and_thinking_is_skipped():
    blocks = [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "n", "input": {}},
              {"type": "thinking", "thinking": "x", "signature": "s"}]
    marked = mark_stable_prefix(_body("q", blocks, "next"), 2)
    assert marked["messages"][1]["content"][1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in marked["messages"][1]["content"][2]


def test_client_breakpoints_are_kept_and_the_limit_respected():
    marked_block = {"type": "text", "text": "s", "cache_control": EPHEMERAL}
    full = _body("q", _text("a"), "next", tools=[{"name": "t", "cache_control": EPHEMERAL}] * 2,
                 system=[marked_block, marked_block])
    assert count_breakpoints(full) == 4
    assert mark_stable_prefix(full, 2) is full
    three = _body("q", _text("a"), "next", system=[marked_block] * 3)
    assert count_breakpoints(mark_stable_prefix(three, 2)) == 4


def test_a_spot_the_client_marked_is_left_alone():
    body = _body("q", [{"type": "text", "text": "a", "cache_control": EPHEMERAL}], "next")
    assert mark_stable_prefix(body, 2) is body


def test_nothing_stable_nothing_marked():
    body = _body(_text("q"))
    assert mark_stable_prefix(body, 0) is body


# ------------------------------------------------------------------ add_cache_hints

def test_anthropic_hints_mark_the_end_and_the_stable_prefix():
    body = _body(_text("task"), _text("note"), _text("q2"), _text("a2"), _text("latest"))
    hinted = add_cache_hints(body, "anthropic", ANTHROPIC_PRICING, 2, "conv")
    assert _marked_at(hinted) == [1, 4]
    assert count_breakpoints(hinted) == 2
    assert count_breakpoints(body) == 0, "the input is not modified"
    assert [m for i, m in enumerate(hinted["messages"]) if i not in (1, 4)] == \
        [m for i, m in enumerate(body["messages"]) if i not in (1, 4)]
    assert "prompt_cache_key" not in hinted


def test_anthropic_hints_without_a_stable_prefix_mark_only_the_end():
    body = _body(_text("task"), "a", _text("latest"))
    hinted = add_cache_hints(body, "anthropic", ANTHROPIC_PRICING, 0, "conv")
    assert _marked_at(hinted) == [2]
    assert hinted["messages"][2]["content"] == [{"type": "text", "text": "latest", "cache_control": EPHEMERAL}]


def test_anthropic_hints_count_the_clients_own_and_the_end_comes_first():
    marked_block = {"type": "text", "text": "s", "cache_control": EPHEMERAL}
    body = _body(_text("task"), _text("note"), _text("latest"), system=[marked_block, marked_block])
    assert _marked_at(add_cache_hints(body, "anthropic", ANTHROPIC_PRICING, 2, "c")) == [1, 2]
    # one breakpoint left: it goes to the end of the request
    three = _body(_text("task"), _text("note"), _text("latest"), system=[marked_block] * 3)
    assert _marked_at(add_cache_hints(three, "anthropic", ANTHROPIC_PRICING, 2, "c")) == [2]
    full = _body(_text("task"), _text("note"), _text("latest"), system=[marked_block] * 4)
    assert add_cache_hints(full, "anthropic", ANTHROPIC_PRICING, 2, "c") is full


def test_anthropic_hints_off():
    body = _body(_text("task"), _text("note"), _text("latest"))
    off = Pricing(cache="anthropic", read=0.1, write=1.25, markers=False)
    assert add_cache_hints(body, "anthropic", off, 2, "c") is body
    assert add_cache_hints(body, "anthropic", NO_CACHE_PRICING, 2, "c") is body
    assert add_cache_hints(body, "anthropic", OPENAI_PRICING, 2, "c") is body


def test_openai_hint_is_a_prompt_cache_key():
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    hinted = add_cache_hints(body, "openai", OPENAI_PRICING, 0, "abcdef" * 10)
    assert hinted["prompt_cache_key"] == "ctxw-" + ("abcdef" * 10)[:32]
    assert list(hinted)[:-1] == list(body) and "prompt_cache_key" not in body
    assert hinted["messages"] is body["messages"]
    mine = {**body, "prompt_cache_key": "client"}
    assert add_cache_hints(mine, "openai", OPENAI_PRICING, 0, "abc") is mine
    assert add_cache_hints(body, "openai", OPENAI_PRICING, 0, "") is body
    assert add_cache_hints(body, "openai", NO_CACHE_PRICING, 0, "abc") is body
    assert add_cache_hints(body, "openai", Pricing(prompt_cache_key=False), 0, "abc") is body
    assert add_cache_hints(body, "openai", ANTHROPIC_PRICING, 1, "abc") is body
