"""The official anthropic SDK, pointed at the proxy, used exactly as a user would."""

from __future__ import annotations

import json

import anthropic

from tests.fake_upstream import expected_reply

from ._helpers import ANTHROPIC_MODEL, ANTHROPIC_TOOLS, assert_token_headers, parse_sse


def test_messages_create_plain(anthropic_client, upstream):
    raw = anthropic_client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        max_tokens=128,
        system="You are terse.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == ANTHROPIC_MODEL
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_reply("What is the capital of France?")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert_token_headers(raw.headers)

    req = upstream.recorder.last
    assert req.path == "/v1/messages"
    # the client's credential is forwarded (this SDK version sends it as a bearer token)
    assert req.header("x-api-key") == "sk-ant-test" or req.header("authorization") == "Bearer sk-ant-test"
    assert req.header("anthropic-version")  # the SDK's own version header, forwarded
    assert req.json()["system"] == "You are terse."


def test_messages_stream_raw_events_in_order(anthropic_client, upstream):
    stream = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=128,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        extra_headers={"x-fake-chunks": "5"},
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types == (
        ["message_start", "content_block_start"]
        + ["content_block_delta"] * 5
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == expected_reply("", 5)
    assert events[-2].delta.stop_reason == "end_turn"
    assert upstream.recorder.wait_for(lambda rec: rec.streams_completed == 1), upstream.recorder


def test_messages_stream_wire_format_includes_ping(http, upstream):
    """The named SSE events arrive exactly as the upstream wrote them (ping included)."""
    body = {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "wire format"}],
    }
    r = http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01", "x-api-key": "k"})
    assert r.status_code == 200
    names = [e["event"] for e in parse_sse(r.content)]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for ev in parse_sse(r.content):
        assert json.loads(ev["data"])["type"] == ev["event"]


def test_messages_stream_helper(anthropic_client, upstream):
    with anthropic_client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=128,
        messages=[{"role": "user", "content": "helper stream"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected_reply("helper stream")
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"


def test_tool_use_and_tool_result_round_trip(anthropic_client, upstream):
    messages = [{"role": "user", "content": "Please call a tool for the weather in Paris"}]
    first = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"location": "Paris", "unit": "c"}

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "21 degrees"}],
        },
    ]
    second = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == expected_reply("tool result 21 degrees")
    sent = upstream.recorder.last.json()
    assert sent["tools"] == ANTHROPIC_TOOLS
    assert sent["messages"][2]["content"][0]["tool_use_id"] == tool_use.id


def test_tool_use_streaming(anthropic_client, upstream):
    with anthropic_client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=256,
        messages=[{"role": "user", "content": "call a tool"}],
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partials = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partials) > 1
    assert json.loads("".join(partials)) == {"location": "Paris", "unit": "c"}
    tool_use = next(b for b in final.content if b.type == "tool_use")
    assert tool_use.input == {"location": "Paris", "unit": "c"}
    assert final.stop_reason == "tool_use"


def test_beta_header_and_sdk_body_identical_to_direct(proxy_url, upstream):
    kwargs = dict(
        model=ANTHROPIC_MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "Long stable system prompt", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi ✓"}],
        metadata={"user_id": "user-42"},
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31,fake-beta-2025-01-01"},
        extra_body={"unknown_future_field": {"a": [1, 2, 3]}},
    )
    via = anthropic.Anthropic(base_url=proxy_url, api_key="sk-ant-test", max_retries=0)
    direct = anthropic.Anthropic(base_url=upstream.url, api_key="sk-ant-test", max_retries=0)
    try:
        via.messages.create(**kwargs)
        proxied = upstream.recorder.last
        direct.messages.create(**kwargs)
        straight = upstream.recorder.last
    finally:
        via.close()
        direct.close()
    assert proxied.body == straight.body
    assert proxied.header("anthropic-beta") == "prompt-caching-2024-07-31,fake-beta-2025-01-01"
    assert proxied.header("anthropic-version") == straight.header("anthropic-version")
    assert proxied.json()["system"][0]["cache_control"] == {"type": "ephemeral"}


async def test_async_messages_stream(async_anthropic_client, upstream):
    async with async_anthropic_client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "async stream"}],
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == expected_reply("async stream")
