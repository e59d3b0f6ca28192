"""Bad input, upstream errors and failures: the right status, the dialect's error
shape, nothing sent upstream when the proxy refuses, and the proxy keeps serving."""

from __future__ import annotations

import json
import re

import anthropic
import httpx
import openai
import pytest

from tests.conftest import SMALL_BODY_LIMIT
from tests.fake_upstream import error_body, expected_reply

from ._helpers import (
    ANTHROPIC_HEADERS,
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_body,
    assert_anthropic_error,
    assert_openai_error,
    openai_body,
    parse_sse,
)

CHAT = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
HEADERS = {"openai": {"authorization": "Bearer sk-test"}, "anthropic": ANTHROPIC_HEADERS}


def _body(dialect: str, text: str = "hello", **extra) -> dict:
    return openai_body(text, **extra) if dialect == "openai" else anthropic_body(text, **extra)


def _assert_error(dialect: str, resp, status: int) -> dict:
    if dialect == "openai":
        return assert_openai_error(resp, status)
    return assert_anthropic_error(resp, status)


# ----------------------------------------------------------------------------- 400


BAD_BODIES = {
    "not-json": b"{this is not json",
    "empty": b"",
    "array": b'[{"model": "m", "messages": []}]',
    "string": b'"just a string"',
    "missing-messages": b'{"model": "gpt-4o-mini"}',
    "missing-model": b'{"messages": [{"role": "user", "content": "hi"}]}',
    "messages-not-list": b'{"model": "m", "messages": "hi"}',
    "bad-utf8": b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    # numbers that JSON cannot carry back out, and nesting the rewrite cannot walk
    "out-of-range-number": b'{"model": "m", "temperature": 1e400, "messages": [{"role": "user", "content": "hi"}]}',
    "nan": b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
    "nested-2000": b'{"model": "m", "metadata": ' + b'[' * 2000 + b']' * 2000
                   + b', "messages": [{"role": "user", "content": "hi"}]}',
}


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_400_and_nothing_sent(http, upstream, local_upstream, dialect, case):
    r = http.post(
        CHAT[dialect],
        content=BAD_BODIES[case],
        headers={"content-type": "application/json", **HEADERS[dialect]},
    )
    err = _assert_error(dialect, r, 400)
    assert err["type"] == "invalid_request_error"
    assert len(upstream.recorder) == 0, [q.path for q in upstream.recorder.requests]
    assert len(local_upstream.recorder) == 0


# the same bodies made big (a 1.5 MB field first): parsed a value at a time on a worker thread
BIG_PAD = b'{"metadata": "' + b"x" * 1_500_000 + b'", '
BIG_BAD_BODIES = {case: BIG_PAD + body[1:] for case, body in BAD_BODIES.items() if body.startswith(b"{")}


@pytest.mark.parametrize("case", sorted(BIG_BAD_BODIES))
def test_big_bad_input_is_400_as_small(http, upstream, case):
    small = http.post(CHAT["openai"], content=BAD_BODIES[case],
                      headers={"content-type": "application/json", **HEADERS["openai"]})
    r = http.post(CHAT["openai"], content=BIG_BAD_BODIES[case],
                  headers={"content-type": "application/json", **HEADERS["openai"]})
    err = _assert_error("openai", r, 400)
    # the same refusal (positions in it differ: the big body is longer)
    assert re.sub(r"\d+", "N", err["message"]) == re.sub(r"\d+", "N", _assert_error("openai", small, 400)["message"])
    assert len(upstream.recorder) == 0


def test_bad_input_raises_sdk_bad_request(openai_client, anthropic_client, upstream):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=OPENAI_MODEL, messages=[])
    assert info.value.status_code == 400
    with pytest.raises(anthropic.BadRequestError) as info2:
        anthropic_client.messages.create(model="", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info2.value.body["error"]["type"] == "invalid_request_error"
    assert len(upstream.recorder) == 0


# ----------------------------------------------------------------------------- 413


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_body_over_limit_is_413(small_body_proxy_url, upstream, dialect):
    big = "x" * (SMALL_BODY_LIMIT + 10)
    with httpx.Client(base_url=small_body_proxy_url, timeout=10) as client:
        r = client.post(CHAT[dialect], json=_body(dialect, big), headers=HEADERS[dialect])
        _assert_error(dialect, r, 413)
        assert len(upstream.recorder) == 0
        # just under the limit is fine
        ok = client.post(CHAT[dialect], json=_body(dialect, "y" * (SMALL_BODY_LIMIT - 500)), headers=HEADERS[dialect])
        assert ok.status_code == 200, ok.text


def test_chunked_body_over_limit_is_413(small_body_proxy_url, upstream):
    def gen():
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(SMALL_BODY_LIMIT // 1000 + 5):
            yield b"z" * 1000
        yield b'"}]}'

    with httpx.Client(base_url=small_body_proxy_url, timeout=10) as client:
        r = client.post("/v1/chat/completions", content=gen(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413)
    assert len(upstream.recorder) == 0


def test_forwarded_path_body_over_limit_is_413(small_body_proxy_url, upstream):
    """max_body_bytes applies to every request, not only the chat routes."""
    with httpx.Client(base_url=small_body_proxy_url, timeout=10) as client:
        r = client.post("/v1/files", content=b"q" * (SMALL_BODY_LIMIT * 2))
    assert_openai_error(r, 413)
    assert len(upstream.recorder) == 0


# ----------------------------------------------------------------------------- upstream errors


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503, 529])
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_upstream_error_passes_through_verbatim(http, upstream, dialect, status):
    r = http.post(CHAT[dialect], json=_body(dialect), headers={**HEADERS[dialect], "x-fake-status": str(status)})
    assert r.status_code == status
    assert r.content == error_body(dialect, status)
    assert r.headers["content-type"] == "application/json"
    if status == 429:
        assert r.headers.get("retry-after") == "1"
    assert len(upstream.recorder) == 1


def test_upstream_error_on_streaming_request_passes_through(http, upstream):
    r = http.post(CHAT["openai"], json=_body("openai", stream=True), headers={"x-fake-status": "429"})
    assert r.status_code == 429
    assert r.content == error_body("openai", 429)


def test_upstream_error_on_forwarded_path(http, upstream):
    r = http.get("/v1/models/nope", headers={"x-fake-status": "404"})
    assert r.status_code == 404
    assert r.content == error_body("openai", 404)


def test_sdks_raise_typed_errors_from_upstream(openai_client, anthropic_client, upstream):
    with pytest.raises(openai.RateLimitError) as info:
        openai_client.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-status": "429"}
        )
    assert info.value.body == json.loads(error_body("openai", 429))["error"]
    with pytest.raises(anthropic.APIStatusError) as info2:
        anthropic_client.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "529"},
        )
    assert info2.value.status_code == 529
    assert info2.value.body == json.loads(error_body("anthropic", 529))


# ----------------------------------------------------------------------------- 502 / 504


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_connection_refused_is_502(refused_proxy_url, dialect):
    with httpx.Client(base_url=refused_proxy_url, timeout=10) as client:
        r = client.post(CHAT[dialect], json=_body(dialect), headers=HEADERS[dialect])
        _assert_error(dialect, r, 502)
        r = client.post(CHAT[dialect], json=_body(dialect, stream=True), headers=HEADERS[dialect])
        _assert_error(dialect, r, 502)


def test_connection_refused_on_forwarded_path_is_502(refused_proxy_url):
    with httpx.Client(base_url=refused_proxy_url, timeout=10) as client:
        assert_openai_error(client.get("/v1/models"), 502)
        assert_anthropic_error(client.get("/v1/models", headers=ANTHROPIC_HEADERS), 502)


def test_connection_refused_sdk(refused_proxy_url):
    client = openai.OpenAI(base_url=refused_proxy_url + "/v1", api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
    finally:
        client.close()
    assert info.value.status_code == 502


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_upstream_timeout_is_504(slow_proxy_url, upstream, dialect):
    # the upstream would answer 200 after 3 s: a 504 means the proxy's read timeout fired first
    with httpx.Client(base_url=slow_proxy_url, timeout=10) as client:
        r = client.post(CHAT[dialect], json=_body(dialect), headers={**HEADERS[dialect], "x-fake-delay": "3"})
    _assert_error(dialect, r, 504)


def test_timeout_mid_stream_ends_with_error_event(slow_proxy_url, upstream):
    with httpx.Client(base_url=slow_proxy_url, timeout=10) as client:
        r = client.post(
            CHAT["openai"],
            json=_body("openai", stream=True),
            headers={"x-fake-chunks": "5", "x-fake-chunk-delay": "2"},
        )
    assert r.status_code == 200
    events = parse_sse(r.content)
    assert "error" in json.loads(events[-1]["data"])


def test_slow_proxy_still_answers_fast_requests(slow_proxy_url, upstream):
    with httpx.Client(base_url=slow_proxy_url, timeout=10) as client:
        r = client.post(CHAT["openai"], json=_body("openai", "quick"), headers={"x-fake-delay": "0.05"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == expected_reply("quick")


# ----------------------------------------------------------------------------- reset mid-stream


def test_reset_mid_stream_openai_error_event(http, upstream):
    r = http.post(
        CHAT["openai"], json=_body("openai", "reset me", stream=True), headers={"x-fake-fault": "reset-mid-stream"}
    )
    assert r.status_code == 200
    events = parse_sse(r.content)
    assert len(events) >= 2  # some chunks were relayed before the reset
    assert json.loads(events[0]["data"])["object"] == "chat.completion.chunk"
    last = json.loads(events[-1]["data"])
    assert set(last) == {"error"}
    assert last["error"]["message"]
    assert all(e["data"] != "[DONE]" for e in events)
    assert upstream.recorder.wait_for(lambda rec: rec.streams_reset == 1), upstream.recorder
    # the proxy keeps serving
    ok = http.post(CHAT["openai"], json=_body("openai", "after reset"))
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"] == expected_reply("after reset")


def test_reset_mid_stream_anthropic_error_event(http, upstream):
    r = http.post(
        CHAT["anthropic"],
        json=_body("anthropic", "reset me", stream=True),
        headers={**ANTHROPIC_HEADERS, "x-fake-fault": "reset-mid-stream"},
    )
    assert r.status_code == 200
    events = parse_sse(r.content)
    assert events[0]["event"] == "message_start"
    assert events[-1]["event"] == "error"
    payload = json.loads(events[-1]["data"])
    assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
    assert "message_stop" not in [e["event"] for e in events]
    ok = http.post(CHAT["anthropic"], json=_body("anthropic", "after"), headers=ANTHROPIC_HEADERS)
    assert ok.status_code == 200


def test_reset_mid_stream_sdks_raise(openai_client, anthropic_client, upstream):
    stream = openai_client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={"x-fake-fault": "reset-mid-stream"},
    )
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert got, "chunks before the reset should have been delivered"

    with pytest.raises(anthropic.APIError):
        with anthropic_client.messages.stream(
            model=ANTHROPIC_MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-fault": "reset-mid-stream"},
        ) as s:
            for _ in s:
                pass
    # and the next request is served normally
    assert openai_client.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "fine"}]
    ).choices[0].message.content == expected_reply("fine")


def test_many_resets_do_not_break_the_proxy(http, upstream):
    for _ in range(10):
        r = http.post(
            CHAT["openai"], json=_body("openai", stream=True), headers={"x-fake-fault": "reset-mid-stream"}
        )
        assert r.status_code == 200
    r = http.post(CHAT["openai"], json=_body("openai", stream=True))
    assert parse_sse(r.content)[-1]["data"] == "[DONE]"
    assert upstream.recorder.wait_for(lambda rec: rec.streams_reset == 10), upstream.recorder


# ----------------------------------------------------------------------------- client disconnect


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_client_disconnect_cancels_upstream_stream(proxy_url, upstream, dialect):
    with httpx.Client(base_url=proxy_url, timeout=10) as client:
        with client.stream(
            "POST",
            CHAT[dialect],
            json=_body(dialect, stream=True),
            # 20 s of stream: the cancel is seen long before it could end on its own, even on a loaded machine
            headers={**HEADERS[dialect], "x-fake-chunks": "400", "x-fake-chunk-delay": "0.05"},
        ) as r:
            assert r.status_code == 200
            first = next(r.iter_raw())
            assert first
        # leaving the block closes the connection mid-stream
    assert upstream.recorder.wait_for(lambda rec: rec.streams_cancelled == 1, timeout=15), (
        f"upstream stream not cancelled: started={upstream.recorder.streams_started} "
        f"completed={upstream.recorder.streams_completed} cancelled={upstream.recorder.streams_cancelled}"
    )
    assert upstream.recorder.streams_completed == 0


def test_sdk_stream_closed_early_cancels_upstream(openai_client, upstream):
    stream = openai_client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "long"}],
        stream=True,
        extra_headers={"x-fake-chunks": "400", "x-fake-chunk-delay": "0.05"},
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert upstream.recorder.wait_for(lambda rec: rec.streams_cancelled == 1, timeout=15)


def test_disconnect_during_upstream_wait_does_not_break_proxy(proxy_url, upstream):
    with httpx.Client(base_url=proxy_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT["openai"], json=_body("openai"), headers={"x-fake-delay": "1"})
    with httpx.Client(base_url=proxy_url, timeout=10) as client:
        r = client.post(CHAT["openai"], json=_body("openai", "still here"))
    assert r.status_code == 200
