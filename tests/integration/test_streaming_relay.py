"""Streams are relayed faithfully and incrementally, chunk by chunk as they arrive."""

from __future__ import annotations

import email.utils
import json
import time

import httpx

from ._helpers import (
    ANTHROPIC_HEADERS,
    ANTHROPIC_MODEL,
    OPENAI_HEADERS,
    OPENAI_MODEL,
    anthropic_body,
    openai_body,
    parse_sse,
)

CHUNK_DELAY = 0.25
CHUNKS = 6


def _timed_events(client: httpx.Client, url: str, body: dict, headers: dict) -> tuple[list[float], bytes, float]:
    """Send a streaming request; return arrival time of each SSE event, the body, and total time."""
    start = time.monotonic()
    arrivals: list[float] = []
    buf = b""
    with client.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_raw():
            buf += chunk
            n_events = buf.count(b"\n\n")
            while len(arrivals) < n_events:
                arrivals.append(time.monotonic() - start)
    return arrivals, buf, time.monotonic() - start


def _assert_incremental(arrivals: list[float], total: float) -> None:
    # the upstream paces its events CHUNK_DELAY apart; a buffering proxy would
    # deliver them all at the end.
    expected_span = CHUNK_DELAY * (len(arrivals) - 1)
    assert total >= expected_span * 0.9
    assert arrivals[0] < CHUNK_DELAY * 2, f"first event took {arrivals[0]:.3f}s of a {total:.3f}s stream"
    assert arrivals[0] < total / 3
    # events keep arriving spread over the stream, not in one burst at the end
    middle = arrivals[len(arrivals) // 2]
    assert middle < total - CHUNK_DELAY, (arrivals, total)


def test_openai_stream_is_incremental(proxy_url, upstream):
    with httpx.Client(base_url=proxy_url, timeout=15) as client:
        arrivals, body, total = _timed_events(
            client,
            "/v1/chat/completions",
            openai_body("slow stream", stream=True),
            {"x-fake-chunks": str(CHUNKS), "x-fake-chunk-delay": str(CHUNK_DELAY)},
        )
    assert len(arrivals) == CHUNKS + 3  # role, pieces, finish, [DONE]
    _assert_incremental(arrivals, total)
    assert body.endswith(b"data: [DONE]\n\n")


def test_anthropic_stream_is_incremental(proxy_url, upstream):
    with httpx.Client(base_url=proxy_url, timeout=15) as client:
        arrivals, body, total = _timed_events(
            client,
            "/v1/messages",
            anthropic_body("slow stream", stream=True),
            {**ANTHROPIC_HEADERS, "x-fake-chunks": str(CHUNKS), "x-fake-chunk-delay": str(CHUNK_DELAY)},
        )
    assert len(arrivals) == CHUNKS + 6  # message_start, block_start, ping, deltas, block_stop, delta, stop
    _assert_incremental(arrivals, total)


def test_openai_sdk_receives_chunks_as_they_arrive(openai_client, upstream):
    start = time.monotonic()
    stream = openai_client.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "sdk timing"}],
        stream=True,
        extra_headers={"x-fake-chunks": str(CHUNKS), "x-fake-chunk-delay": str(CHUNK_DELAY)},
    )
    arrivals = [time.monotonic() - start for _ in stream]
    total = time.monotonic() - start
    _assert_incremental(arrivals, total)


def test_anthropic_sdk_receives_events_as_they_arrive(anthropic_client, upstream):
    start = time.monotonic()
    with anthropic_client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "sdk timing"}],
        extra_headers={"x-fake-chunks": str(CHUNKS), "x-fake-chunk-delay": str(CHUNK_DELAY)},
    ) as stream:
        arrivals = [time.monotonic() - start for _ in stream.text_stream]
    total = time.monotonic() - start
    assert len(arrivals) == CHUNKS
    assert arrivals[0] < total / 2
    assert arrivals[-1] - arrivals[0] >= CHUNK_DELAY * (CHUNKS - 1) * 0.8


def _direct_and_proxied(client: httpx.Client, upstream_url: str, proxy_url: str, path: str, body: dict,
                        headers: dict) -> tuple[httpx.Response, httpx.Response]:
    """The same bytes sent to the fake directly and through the proxy."""
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json", **headers}
    return (client.post(upstream_url + path, content=content, headers=headers),
            client.post(proxy_url + path, content=content, headers=headers))


def test_openai_stream_bytes_identical_to_direct(proxy_url, upstream):
    with httpx.Client(timeout=15) as client:
        direct, proxied = _direct_and_proxied(
            client, upstream.url, proxy_url, "/v1/chat/completions",
            openai_body("byte for byte", stream=True, stream_options={"include_usage": True}), OPENAI_HEADERS)
    assert direct.status_code == proxied.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert parse_sse(proxied.content)[-1]["data"] == "[DONE]"


def test_anthropic_stream_bytes_identical_to_direct(proxy_url, upstream):
    with httpx.Client(timeout=15) as client:
        direct, proxied = _direct_and_proxied(client, upstream.url, proxy_url, "/v1/messages",
                                              anthropic_body("byte for byte", stream=True), ANTHROPIC_HEADERS)
    assert direct.status_code == proxied.status_code == 200
    assert proxied.content == direct.content


def test_json_answer_bytes_and_headers_identical_to_direct(proxy_url, upstream):
    with httpx.Client(timeout=15) as client:
        direct, proxied = _direct_and_proxied(client, upstream.url, proxy_url, "/v1/chat/completions",
                                              openai_body("plain bytes"), OPENAI_HEADERS)
    assert proxied.content == direct.content
    for name in ("content-type", "x-request-id", "x-fake-upstream"):
        assert proxied.headers.get(name) == direct.headers.get(name), name
    # the bytes on the wire (gzipped: the fake compresses when the client accepts it)
    assert int(proxied.headers["content-length"]) == proxied.num_bytes_downloaded


def test_one_date_field_the_upstreams_on_a_relayed_answer_and_the_proxys_own_on_its_answers(proxy_url, upstream):
    with httpx.Client(timeout=15) as client:
        direct, proxied = _direct_and_proxied(client, upstream.url, proxy_url, "/v1/chat/completions",
                                              openai_body("dated"), OPENAI_HEADERS)
        own = [client.get(proxy_url + "/v1/../etc"), client.get(proxy_url + "/_ctxwarden/health")]
    assert proxied.headers.get_list("date") == direct.headers.get_list("date") and len(direct.headers.get_list("date")) == 1
    assert proxied.headers.get_list("server") == direct.headers.get_list("server"), "no Server field of its own"
    for answer in own:
        (date,) = answer.headers.get_list("date")
        assert email.utils.parsedate_to_datetime(date).tzinfo is not None


def test_many_streams_back_to_back_on_one_connection(http, upstream):
    for i in range(20):
        body = openai_body(f"n{i}", stream=True) if i % 2 else anthropic_body(f"n{i}", stream=True)
        path = "/v1/chat/completions" if i % 2 else "/v1/messages"
        r = http.post(path, json=body, headers=ANTHROPIC_HEADERS if not i % 2 else {})
        assert r.status_code == 200
        assert parse_sse(r.content)
    assert upstream.recorder.wait_for(lambda rec: rec.streams_completed == 20), upstream.recorder


def test_gzip_answer_relayed_intact(openai_client, anthropic_client, http, upstream):
    """A compressed upstream answer reaches the client still compressed, with its
    Content-Encoding, so the client's own decoding works."""
    with httpx.Client(timeout=15) as client:
        body = openai_body("squeeze me")
        direct = client.post(upstream.url + "/v1/chat/completions", json=body, headers={"x-fake-gzip": "1"})
        proxied = http.post("/v1/chat/completions", json=body, headers={"x-fake-gzip": "1"})
    assert proxied.headers["content-encoding"] == "gzip"
    assert proxied.json() == direct.json()
    completion = openai_client.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "gz"}], extra_headers={"x-fake-gzip": "1"}
    )
    assert completion.choices[0].message.content == "Echo: gz"
    message = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=5, messages=[{"role": "user", "content": "gz"}],
        extra_headers={"x-fake-gzip": "1"},
    )
    assert message.content[0].text == "Echo: gz"
