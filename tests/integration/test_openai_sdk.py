"""The official openai SDK, pointed at the proxy, used exactly as a user would."""

from __future__ import annotations

import json

import openai

from tests.fake_upstream import expected_reply

from ._helpers import OPENAI_MODEL, OPENAI_TOOLS, assert_token_headers


def test_chat_completion_plain(openai_client, upstream):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == OPENAI_MODEL
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected_reply("What is the capital of France?")
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert_token_headers(raw.headers)

    assert len(upstream.recorder) == 1
    req = upstream.recorder.last
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.header("authorization") == "Bearer sk-test"
    assert req.json()["messages"][1]["content"] == "What is the capital of France?"


def test_chat_completion_stream(openai_client, upstream):
    stream = openai_client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        extra_headers={"x-fake-chunks": "6"},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == expected_reply("", 6)
    assert len(chunks) == 6 + 2  # role chunk, 6 pieces, finish chunk; [DONE] ends the iteration
    assert upstream.recorder.wait_for(lambda rec: rec.streams_completed == 1), upstream.recorder


def test_chat_completion_stream_include_usage(openai_client, upstream):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert_token_headers(raw.headers)
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == expected_reply("count my tokens")
    assert upstream.recorder.last.json()["stream_options"] == {"include_usage": True}


def test_chat_completion_stream_helper(openai_client, upstream):
    with openai_client.chat.completions.stream(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "helper stream"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert kinds[0] == "chunk"
    assert "content.done" in kinds
    assert final.choices[0].message.content == expected_reply("helper stream")


def test_tool_call_and_tool_result_round_trip(openai_client, upstream):
    messages = [{"role": "user", "content": "Please call a tool to get the weather in Paris"}]
    first = openai_client.chat.completions.create(model=OPENAI_MODEL, messages=messages, tools=OPENAI_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["location"] == "Paris"
    assert upstream.recorder.last.json()["tools"] == OPENAI_TOOLS

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = openai_client.chat.completions.create(model=OPENAI_MODEL, messages=messages, tools=OPENAI_TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == expected_reply('tool result {"temp_c": 21}')
    sent = upstream.recorder.last.json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}


def test_tool_call_streaming(openai_client, upstream):
    stream = openai_client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "call a tool now"}],
        tools=OPENAI_TOOLS,
        stream=True,
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"location": "Paris", "unit": "c"}
    assert len(deltas) > 2  # arguments arrived in several fragments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    with openai_client.chat.completions.stream(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "call a tool now"}], tools=OPENAI_TOOLS
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == arguments


def test_sdk_body_reaches_upstream_identical_to_direct(openai_client, upstream):
    """What the SDK sends through the proxy arrives byte-identical to what it sends directly."""
    kwargs = dict(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "call a tool éè 🚀"}],
        tools=OPENAI_TOOLS,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        metadata={"tenant": "acme"},
        seed=7,
        temperature=0.2,
        extra_body={"x_vendor_flag": {"nested": [1, 2.5, None, True]}},
    )
    openai_client.chat.completions.create(**kwargs)
    via_proxy = upstream.recorder.last.body
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-test", max_retries=0)
    try:
        direct.chat.completions.create(**kwargs)
    finally:
        direct.close()
    assert upstream.recorder.last.body == via_proxy
    assert json.loads(via_proxy)["x_vendor_flag"] == {"nested": [1, 2.5, None, True]}


def test_organization_and_project_headers_forwarded(proxy_url, upstream):
    client = openai.OpenAI(
        base_url=proxy_url + "/v1",
        api_key="sk-test",
        organization="org-fake123",
        project="proj_fake456",
        max_retries=0,
    )
    try:
        client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}])
    finally:
        client.close()
    req = upstream.recorder.last
    assert req.header("openai-organization") == "org-fake123"
    assert req.header("openai-project") == "proj_fake456"


async def test_async_client_concurrent_streams(async_openai_client, upstream):
    import asyncio

    async def one(i: int) -> str:
        stream = await async_openai_client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": f"request number {i}"}],
            stream=True,
            extra_headers={"x-fake-chunk-delay": "0.01"},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    results = await asyncio.gather(*(one(i) for i in range(10)))
    assert results == [expected_reply(f"request number {i}") for i in range(10)]
    assert upstream.recorder.wait_for(lambda rec: rec.streams_completed == 10), upstream.recorder
