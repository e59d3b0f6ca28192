"""SSE recording and replay for both dialects, checked against the official SDK parsers."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxwarden.cache.sse import SSEParser, StreamRecorder, parse_sse, replay_sse
from ctxwarden.dialects import get_dialect

# --------------------------------------------------------------------------- answers

OPENAI_TEXT = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello, wörld! 👋\nSecond line with \"quotes\" and \\ backslash.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_123",
}

OPENAI_TOOLS = {
    "id": "chatcmpl-tools",
    "object": "chat.completion",
    "created": 1_700_000_001,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80},
    "system_fingerprint": None,
}

OPENAI_REFUSAL = {
    "id": "chatcmpl-ref",
    "object": "chat.completion",
    "created": 1_700_000_002,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    "system_fingerprint": "fp_9",
}

OPENAI_N2_LOGPROBS = {
    "id": "chatcmpl-n2",
    "object": "chat.completion",
    "created": 1_700_000_003,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Yes", "refusal": None},
            "logprobs": {
                "content": [{"token": "Yes", "logprob": -0.01, "bytes": [89, 101, 115], "top_logprobs": []}],
                "refusal": None,
            },
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "No", "refusal": None},
            "logprobs": {
                "content": [{"token": "No", "logprob": -4.5, "bytes": [78, 111], "top_logprobs": []}],
                "refusal": None,
            },
            "finish_reason": "length",
        },
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "system_fingerprint": "fp_2",
}

OPENAI_ANSWERS = [OPENAI_TEXT, OPENAI_TOOLS, OPENAI_REFUSAL, OPENAI_N2_LOGPROBS]

ANTHROPIC_TEXT = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-1",
    "content": [{"type": "text", "text": "Bonjour 🌍\n\nA second paragraph."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
        "output_tokens": 12,
        "service_tier": "standard",
    },
}

ANTHROPIC_TOOLS = {
    "id": "msg_02",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-1",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather; call the tool.", "signature": "EqQBCkYIBxgCKkA="},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
        {"type": "tool_use", "id": "toolu_02", "name": "ping", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 300, "output_tokens": 80},
}

ANTHROPIC_CITATIONS = {
    "id": "msg_03",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-1",
    "content": [
        {"type": "redacted_thinking", "data": "opaque=="},
        {
            "type": "text",
            "text": "The grass is green.",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "The grass is green.",
                    "document_index": 0,
                    "document_title": "Doc",
                    "start_char_index": 0,
                    "end_char_index": 19,
                }
            ],
        },
    ],
    "stop_reason": "stop_sequence",
    "stop_sequence": "###",
    "usage": {"input_tokens": 40, "output_tokens": 7},
}

ANTHROPIC_ANSWERS = [ANTHROPIC_TEXT, ANTHROPIC_TOOLS, ANTHROPIC_CITATIONS]


def _enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _record(dialect: str, chunks: list[bytes], **kw: Any) -> dict | None:
    rec = StreamRecorder(get_dialect(dialect), **kw)
    for chunk in chunks:
        rec.feed(chunk)
    out = rec.result()
    return None if out is None else json.loads(out)


def _resplit(events: list[bytes], size: int, eol: bytes = b"\n") -> list[bytes]:
    data = b"".join(events)
    if eol != b"\n":
        data = data.replace(b"\n", eol)
    return [data[i : i + size] for i in range(0, len(data), size)]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("answer", OPENAI_ANSWERS, ids=["text", "tools", "refusal", "n2-logprobs"])
@pytest.mark.parametrize("size", [1, 2, 5, 64, 100_000])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_openai_round_trip(answer: dict, size: int, eol: bytes) -> None:
    events = replay_sse(get_dialect("openai"), _enc(answer), include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    assert _record("openai", _resplit(events, size, eol)) == answer


@pytest.mark.parametrize("answer", ANTHROPIC_ANSWERS, ids=["text", "tools", "citations"])
@pytest.mark.parametrize("size", [1, 3, 64, 100_000])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_anthropic_round_trip(answer: dict, size: int, eol: bytes) -> None:
    events = replay_sse(get_dialect("anthropic"), _enc(answer))
    assert events[0].startswith(b"event: message_start\n")
    assert events[-1].startswith(b"event: message_stop\n")
    assert _record("anthropic", _resplit(events, size, eol)) == answer


def test_openai_usage_chunk_only_when_asked() -> None:
    without = replay_sse(get_dialect("openai"), _enc(OPENAI_TEXT), include_usage=False)
    assert not any(b'"usage"' in e for e in without)
    recorded = _record("openai", without)
    assert recorded is not None and "usage" not in recorded
    assert {k: v for k, v in OPENAI_TEXT.items() if k != "usage"} == recorded

    with_usage = replay_sse(get_dialect("openai"), _enc(OPENAI_TEXT), include_usage=True)
    chunks = [json.loads(e[6:]) for e in with_usage[:-1]]
    assert all("usage" in c for c in chunks)
    assert [c["usage"] is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["choices"] == []


def test_openai_tool_call_deltas_shape() -> None:
    chunks = [json.loads(e[6:]) for e in replay_sse(get_dialect("openai"), _enc(OPENAI_TOOLS))[:-1]]
    tool_deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert tool_deltas == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city":"Paris","unit":"c"}'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": '{"tz":"Europe/Paris"}'}},
    ]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


# --------------------------------------------------------------------------- live-style streams


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _ev(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def _oa_chunk(delta: dict, finish: str | None = None, index: int = 0, **extra: Any) -> bytes:
    return _data(
        {
            "id": "chatcmpl-live",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "system_fingerprint": "fp_x",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
    )


def openai_live_stream() -> list[bytes]:
    return [
        b": keep-alive comment\n\n",
        _oa_chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
        _oa_chunk({"content": "Hel"}, usage=None),
        _oa_chunk({"content": "lo"}, usage=None),
        _oa_chunk(
            {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            usage=None,
        ),
        _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}, usage=None),
        _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}, usage=None),
        _oa_chunk({}, finish="tool_calls", usage=None),
        _data(
            {
                "id": "chatcmpl-live",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "gpt-4o",
                "system_fingerprint": "fp_x",
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
        ),
        b"data: [DONE]\n\n",
    ]


def anthropic_live_stream() -> list[bytes]:
    return [
        _ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_live",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
                },
            },
        ),
        _ev("ping", {"type": "ping"}),
        _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}}),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}}),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_x", "name": "lookup", "input": {}},
            },
        ),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q": "ca'}}),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 't"}'}}),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
        _ev(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 15}},
        ),
        _ev("message_stop", {"type": "message_stop"}),
    ]


def test_openai_recorder_on_live_style_stream() -> None:
    assert _record("openai", openai_live_stream()) == {
        "id": "chatcmpl-live",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": None,
                    "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "system_fingerprint": "fp_x",
    }


def test_anthropic_recorder_on_live_style_stream() -> None:
    assert _record("anthropic", anthropic_live_stream()) == {
        "id": "msg_live",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Hi there"},
            {"type": "tool_use", "id": "toolu_x", "name": "lookup", "input": {"q": "cat"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 15},
    }


def test_openai_repeated_tool_call_id_and_name_are_not_doubled() -> None:
    # some OpenAI-compatible servers repeat id/type/name on every tool-call delta
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    stream = [
        _oa_chunk({"role": "assistant"}),
        _oa_chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": "{"}}]}),
        _oa_chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": "}"}}]}),
        _oa_chunk({}, finish="tool_calls"),
        b"data: [DONE]\n\n",
    ]
    out = _record("openai", stream)
    assert out is not None
    assert out["choices"][0]["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


# --------------------------------------------------------------------------- incomplete streams


def test_openai_incomplete_streams_give_none() -> None:
    live = openai_live_stream()
    assert _record("openai", live[:-1]) is None  # no [DONE]
    no_finish = [c for c in live if b'"finish_reason": "tool_calls"' not in c]
    assert _record("openai", no_finish) is None  # [DONE] but no finish_reason
    whole = b"".join(live)
    assert _record("openai", [whole[: len(whole) // 2]]) is None  # cut mid-event
    assert _record("openai", []) is None
    assert _record("openai", [b"data: [DONE]\n\n"]) is None  # no choices at all
    err = _data({"error": {"message": "overloaded", "type": "server_error"}})
    assert _record("openai", live[:3] + [err] + live[3:]) is None
    assert _record("openai", live[:3] + [b"event: error\ndata: {}\n\n"] + live[3:]) is None
    assert _record("openai", live[:3] + [b"data: {not json\n\n"] + live[3:]) is None
    assert _record("openai", [b"data: \xff\xfe\n\n"] + live) is None  # not UTF-8


def test_anthropic_incomplete_streams_give_none() -> None:
    live = anthropic_live_stream()
    assert _record("anthropic", live[:-1]) is None  # no message_stop
    assert _record("anthropic", live[1:]) is None  # no message_start
    open_block = [c for c in live if b'"content_block_stop", "index": 1' not in c]
    assert _record("anthropic", open_block) is None
    error = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert _record("anthropic", live[:4] + [error] + live[4:]) is None
    unknown = _ev(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "brand_new_delta", "x": 1}},
    )
    assert _record("anthropic", live[:4] + [unknown] + live[4:]) is None
    bad_json = _ev(
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{oops"}},
    )
    assert _record("anthropic", live[:8] + [bad_json] + live[8:]) is None


def test_recorder_max_bytes_abandons_recording() -> None:
    live = openai_live_stream()
    total = sum(len(c) for c in live)
    assert _record("openai", live, max_bytes=total) is not None
    rec = StreamRecorder(get_dialect("openai"), max_bytes=total - 1)
    for c in live:
        rec.feed(c)
    assert rec.overflow and rec.result() is None
    assert rec._chunks == []  # nothing kept


def test_recorder_result_updates_after_more_feed() -> None:
    rec = StreamRecorder(get_dialect("anthropic"))
    live = anthropic_live_stream()
    for c in live[:-1]:
        rec.feed(c)
    assert rec.result() is None
    rec.feed(live[-1])
    assert rec.result() is not None


# --------------------------------------------------------------------------- SSE parser


def test_sse_parser_line_endings_and_fields() -> None:
    raw = b"event: a\r\ndata: 1\r\ndata:2\r\nid: 7\r\nretry: 10\r\n: comment\r\n\r\nevent: b\rdata: x\r\rdata: y\n\n"
    for size in (1, 2, 3, len(raw)):
        parser = SSEParser()
        events = []
        for i in range(0, len(raw), size):
            events += parser.feed(raw[i : i + size])
        events += parser.finish()
        assert events == [("a", "1\n2"), ("b", "x"), (None, "y")], size


def test_sse_parser_flushes_last_event_without_blank_line() -> None:
    assert parse_sse(b"data: [DONE]") == [(None, "[DONE]")]
    assert parse_sse(b"data: [DONE]\n") == [(None, "[DONE]")]
    assert parse_sse([b"data: a\r", b"\n\r", b"\n"]) == [(None, "a")]


# --------------------------------------------------------------------------- property: round trip


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def openai_answers(draw: Callable) -> dict:
    n = draw(st.integers(1, 3))
    choices = []
    for i in range(n):
        message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | _text), "refusal": None}
        calls = draw(st.lists(st.tuples(_text, st.dictionaries(_text, _json_value, max_size=3)), max_size=3))
        if calls:
            message["tool_calls"] = [
                {"id": f"call_{i}_{j}", "type": "function", "function": {"name": name or "f", "arguments": json.dumps(args)}}
                for j, (name, args) in enumerate(calls)
            ]
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"]))}
        )
    return {
        "id": "chatcmpl-" + draw(st.text("abc123", min_size=1, max_size=8)),
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini"])),
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "system_fingerprint": draw(st.none() | st.just("fp_1")),
    }


@st.composite
def anthropic_answers(draw: Callable) -> dict:
    blocks = []
    for kind in draw(st.lists(st.sampled_from(["text", "thinking", "tool_use"]), min_size=0, max_size=4)):
        if kind == "text":
            blocks.append({"type": "text", "text": draw(_text)})
        elif kind == "thinking":
            blocks.append({"type": "thinking", "thinking": draw(_text), "signature": draw(st.text("abcXYZ=", max_size=10))})
        else:
            blocks.append(
                {"type": "tool_use", "id": "toolu_" + str(len(blocks)), "name": "t", "input": draw(st.dictionaries(_text, _json_value, max_size=3))}
            )
    return {
        "id": "msg_" + draw(st.text("abc123", min_size=1, max_size=8)),
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": blocks,
        "stop_reason": draw(st.sampled_from(["end_turn", "tool_use", "max_tokens"])),
        "stop_sequence": None,
        "usage": {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": draw(st.integers(0, 10**5))},
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=openai_answers(), size=st.integers(1, 50))
def test_openai_round_trip_property(answer: dict, size: int) -> None:
    events = replay_sse(get_dialect("openai"), _enc(answer), include_usage=True)
    assert _record("openai", _resplit(events, size)) == answer


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=anthropic_answers(), size=st.integers(1, 50))
def test_anthropic_round_trip_property(answer: dict, size: int) -> None:
    events = replay_sse(get_dialect("anthropic"), _enc(answer))
    assert _record("anthropic", _resplit(events, size, b"\r\n")) == answer


# --------------------------------------------------------------------------- official SDKs


def _sse_transport(events: list[bytes], seen: list[dict]) -> httpx2.MockTransport:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return httpx2.MockTransport(handler)


def _json_transport(answer: bytes) -> httpx2.MockTransport:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=answer)

    return httpx2.MockTransport(handler)


def _openai(transport: httpx2.MockTransport):
    import openai

    return openai.AsyncOpenAI(
        api_key="sk-test", base_url="http://proxy.test/v1", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
    )


def _anthropic(transport: httpx2.MockTransport):
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url="http://proxy.test", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
    )


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("answer", OPENAI_ANSWERS, ids=["text", "tools", "refusal", "n2-logprobs"])
async def test_openai_sdk_iterates_replayed_stream(answer: dict) -> None:
    seen: list[dict] = []
    client = _openai(_sse_transport(replay_sse(get_dialect("openai"), _enc(answer), include_usage=True), seen))
    try:
        stream = await client.chat.completions.create(
            model=answer["model"], messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        content: dict[int, str] = {}
        refusal: dict[int, str] = {}
        args: dict[tuple[int, int], str] = {}
        names: dict[tuple[int, int], str] = {}
        ids: dict[tuple[int, int], str] = {}
        finish: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            assert chunk.id == answer["id"] and chunk.model == answer["model"]
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                d = choice.delta
                content[choice.index] = content.get(choice.index, "") + (d.content or "")
                refusal[choice.index] = refusal.get(choice.index, "") + (d.refusal or "")
                for call in d.tool_calls or []:
                    key = (choice.index, call.index)
                    if call.id:
                        ids[key] = call.id
                    if call.function and call.function.name:
                        names[key] = call.function.name
                    if call.function and call.function.arguments:
                        args[key] = args.get(key, "") + call.function.arguments
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
    finally:
        await client.close()
    assert seen and seen[0]["stream"] is True
    for choice in answer["choices"]:
        i, message = choice["index"], choice["message"]
        assert content[i] == (message["content"] or "")
        assert refusal[i] == (message.get("refusal") or "")
        assert finish[i] == choice["finish_reason"]
        for j, call in enumerate(message.get("tool_calls") or []):
            assert ids[(i, j)] == call["id"]
            assert names[(i, j)] == call["function"]["name"]
            assert args[(i, j)] == call["function"]["arguments"]
    assert usage is not None and usage.total_tokens == answer["usage"]["total_tokens"]


@pytest.mark.parametrize("answer", [OPENAI_TEXT, OPENAI_TOOLS, OPENAI_REFUSAL], ids=["text", "tools", "refusal"])
async def test_openai_sdk_stream_helper_final_completion_matches_json(answer: dict) -> None:
    client = _openai(_sse_transport(replay_sse(get_dialect("openai"), _enc(answer), include_usage=True), []))
    try:
        async with client.chat.completions.stream(
            model=answer["model"], messages=MESSAGES, stream_options={"include_usage": True}
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
    finally:
        await client.close()
    # the same answer parsed as a plain JSON response
    plain_client = _openai(_json_transport(_enc(answer)))
    try:
        plain = await plain_client.chat.completions.create(model=answer["model"], messages=MESSAGES)
    finally:
        await plain_client.close()
    assert final.id == plain.id and final.model == plain.model
    assert final.usage == plain.usage
    for got, want in zip(final.choices, plain.choices, strict=True):
        assert got.finish_reason == want.finish_reason
        assert got.message.content == want.message.content
        assert got.message.refusal == want.message.refusal
        assert [(c.id, c.function.name, c.function.arguments) for c in got.message.tool_calls or []] == [
            (c.id, c.function.name, c.function.arguments) for c in want.message.tool_calls or []
        ]


@pytest.mark.parametrize("answer", ANTHROPIC_ANSWERS, ids=["text", "tools", "citations"])
async def test_anthropic_sdk_final_message_matches_json(answer: dict) -> None:
    seen: list[dict] = []
    client = _anthropic(_sse_transport(replay_sse(get_dialect("anthropic"), _enc(answer)), seen))
    try:
        async with client.messages.stream(model=answer["model"], max_tokens=100, messages=MESSAGES) as stream:
            text = ""
            async for event in stream:
                if event.type == "text":
                    text += event.text
            final = await stream.get_final_message()
    finally:
        await client.close()
    assert seen and seen[0]["stream"] is True
    plain_client = _anthropic(_json_transport(_enc(answer)))
    try:
        plain = await plain_client.messages.create(model=answer["model"], max_tokens=100, messages=MESSAGES)
    finally:
        await plain_client.close()
    assert final.model_dump(exclude_none=True) == plain.model_dump(exclude_none=True)
    assert plain.to_dict() == answer  # the SDK adds stop_details=None to a streamed snapshot, hence exclude_none above
    assert text == "".join(b["text"] for b in answer["content"] if b["type"] == "text")


async def test_anthropic_sdk_raw_events_from_replay() -> None:
    client = _anthropic(_sse_transport(replay_sse(get_dialect("anthropic"), _enc(ANTHROPIC_TOOLS)), []))
    try:
        stream = await client.messages.create(model="claude-test-1", max_tokens=100, messages=MESSAGES, stream=True)
        kinds = [event.type async for event in stream]
    finally:
        await client.close()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == len(ANTHROPIC_TOOLS["content"])


async def test_recorded_live_stream_parses_as_sdk_json() -> None:
    """What the recorder stores is a valid non-streaming answer for each SDK."""
    oa = StreamRecorder(get_dialect("openai"))
    for c in openai_live_stream():
        oa.feed(c)
    client = _openai(_json_transport(oa.result()))
    try:
        completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        await client.close()
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].message.tool_calls[0].function.arguments == '{"x": 1}'

    an = StreamRecorder(get_dialect("anthropic"))
    for c in anthropic_live_stream():
        an.feed(c)
    aclient = _anthropic(_json_transport(an.result()))
    try:
        message = await aclient.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES)
    finally:
        await aclient.close()
    assert message.content[0].text == "Hi there"
    assert message.content[1].input == {"q": "cat"}
    assert message.usage.output_tokens == 15 and message.usage.input_tokens == 20
