"""What the client sends reaches the upstream as sent: body bytes, headers, query."""

from __future__ import annotations

import json

import httpx
import pytest

from ._helpers import (
    ANTHROPIC_HEADERS,
    ANTHROPIC_MODEL,
    ANTHROPIC_TOOLS,
    OPENAI_MODEL,
    OPENAI_TOOLS,
    TINY_PDF_B64,
    TINY_PNG_B64,
    assert_token_headers,
)

# Deliberately odd serialisation: spacing, key order, escapes, number forms.
# Any re-serialisation by the proxy would change these bytes.
OPENAI_RAW = (
    '{ "messages" : [ {"role":"system","content":"Be brief.\\u00e9"},\n'
    '  {"role": "user", "content": [{"type": "text", "text": "describe \\ud83d\\ude80"},'
    ' {"type": "image_url", "image_url": {"url": "data:image/png;base64,' + TINY_PNG_B64 + '", "detail": "low"}}]} ],\n'
    '  "model":"' + OPENAI_MODEL + '", "temperature": 1.0e0, "top_p": 1.00,\n'
    '  "tools": ' + json.dumps(OPENAI_TOOLS, indent=1) + ',\n'
    '  "response_format": {"type": "json_object"}, "metadata": {"trace": "abc"},\n'
    '  "x_unknown_future_field": {"deep": [1, 2, {"k": null}]}, "logit_bias": {"50256": -100} }'
).encode()

ANTHROPIC_RAW = (
    '{"model": "' + ANTHROPIC_MODEL + '", "max_tokens": 256,\n'
    ' "system": [{"type": "text", "text": "Stable prefix", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],\n'
    ' "messages": [{"role": "user", "content": [\n'
    '   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "' + TINY_PNG_B64 + '"}},\n'
    '   {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "' + TINY_PDF_B64 + '"},'
    ' "cache_control": {"type": "ephemeral"}},\n'
    '   {"type": "text", "text": "What are these? \\u2713"}]}],\n'
    ' "tools": ' + json.dumps(ANTHROPIC_TOOLS) + ', "tool_choice": {"type": "auto"},\n'
    ' "metadata": {"user_id": "u-123"}, "thinking": {"type": "enabled", "budget_tokens": 1024},\n'
    ' "some_future_param": [true, false, 0.5e-3]}'
).encode()


def test_openai_body_bytes_reach_upstream_unchanged(http, upstream):
    r = http.post(
        "/v1/chat/completions",
        content=OPENAI_RAW,
        headers={"content-type": "application/json", "authorization": "Bearer sk-test"},
    )
    assert r.status_code == 200, r.text
    assert_token_headers(r.headers)
    assert len(upstream.recorder) == 1
    assert upstream.recorder.last.body == OPENAI_RAW


def test_anthropic_body_bytes_reach_upstream_unchanged(http, upstream):
    r = http.post(
        "/v1/messages",
        content=ANTHROPIC_RAW,
        headers={"content-type": "application/json", **ANTHROPIC_HEADERS},
    )
    assert r.status_code == 200, r.text
    assert_token_headers(r.headers)
    assert upstream.recorder.last.body == ANTHROPIC_RAW


def test_streaming_request_body_unchanged(http, upstream):
    raw = OPENAI_RAW[:-1] + b', "stream": true, "stream_options": {"include_usage": true}}'
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert upstream.recorder.last.body == raw


def test_provider_headers_reach_upstream(http, upstream):
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer sk-user-key",
        "x-api-key": "sk-ant-user-key",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31, output-128k-2025-02-19",
        "anthropic-dangerous-direct-browser-access": "true",
        "OpenAI-Organization": "org-abc",
        "OpenAI-Project": "proj-def",
        "OpenAI-Beta": "assistants=v2",
        "x-stainless-retry-count": "0",
        "user-agent": "my-app/1.2",
        "x-custom-trace": "trace-123",
        "idempotency-key": "idem-1",
    }
    r = http.post(
        "/v1/messages",
        content=json.dumps({"model": ANTHROPIC_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        headers=headers,
    )
    assert r.status_code == 200
    got = upstream.recorder.last
    for name, value in headers.items():
        if name == "content-type":
            continue
        assert got.header(name) == value, f"{name}: {got.header(name)!r} != {value!r}"


def test_repeated_headers_kept(upstream, proxy_url):
    with httpx.Client(timeout=10) as client:
        r = client.post(
            proxy_url + "/v1/chat/completions",
            json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers=[("x-multi", "one"), ("x-multi", "two")],
        )
    assert r.status_code == 200
    assert upstream.recorder.last.header_all("x-multi") == ["one", "two"]


def test_host_rewritten_to_upstream(http, upstream, proxy_url):
    r = http.post(
        "/v1/chat/completions",
        json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"host": "api.example.com"},
    )
    assert r.status_code == 200
    assert upstream.recorder.last.header_all("host") == [f"127.0.0.1:{upstream.port}"]


def test_hop_by_hop_headers_dropped(http, upstream):
    r = http.post(
        "/v1/chat/completions",
        json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={
            "connection": "keep-alive, x-hop-private",
            "x-hop-private": "must-not-pass",
            "keep-alive": "timeout=5, max=100",
            "proxy-authorization": "Basic dXNlcjpwYXNz",
            "proxy-connection": "keep-alive",
            "te": "trailers",
            "trailer": "x-checksum",
            "x-end-to-end": "kept",
        },
    )
    assert r.status_code == 200
    got = upstream.recorder.last
    for name in ("x-hop-private", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer"):
        assert got.header(name) is None, f"hop-by-hop header {name} reached the upstream"
    assert "x-hop-private" not in (got.header("connection") or "")
    assert got.header("x-end-to-end") == "kept"


def test_hop_by_hop_response_headers_not_relayed_verbatim(http, upstream):
    r = http.get("/v1/models")
    assert r.status_code == 200
    # the proxy frames its own response; no duplicate or conflicting framing headers
    assert not ("content-length" in r.headers and "transfer-encoding" in r.headers)
    assert r.headers.get_list("content-type") == ["application/json"]


@pytest.mark.parametrize(
    "path, query",
    [
        ("/v1/chat/completions", "api-version=2024-06-01&trace=a%20b&x=1&x=2"),
        ("/v1/models", "limit=2&after_id=gpt-4o&before_id="),
        ("/v1/batches", "limit=5&after=batch_%F0%9F%9A%80"),
    ],
)
def test_query_string_kept(http, upstream, path, query):
    if path == "/v1/chat/completions":
        r = http.post(
            f"{path}?{query}", json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "q"}]}
        )
    else:
        r = http.get(f"{path}?{query}")
    assert r.status_code == 200, r.text
    got = upstream.recorder.last
    assert got.path == path
    assert got.query == query


def test_credentials_forwarded_for_both_dialects(http, upstream):
    http.post(
        "/v1/chat/completions",
        json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": "Bearer sk-tenant-a"},
    )
    assert upstream.recorder.last.header("authorization") == "Bearer sk-tenant-a"
    http.post(
        "/v1/messages",
        json={"model": ANTHROPIC_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": "sk-ant-tenant-b", "anthropic-version": "2023-06-01"},
    )
    assert upstream.recorder.last.header("x-api-key") == "sk-ant-tenant-b"


def test_api_key_env_replaces_client_credentials(upstream, monkeypatch):
    from tests.conftest import serve_proxy
    from tests.servers import proxy_config_xml

    monkeypatch.setenv("CTXWARDEN_TEST_UPSTREAM_KEY", "sk-server-side-key")
    xml = proxy_config_xml(upstream.url, api_key_env="CTXWARDEN_TEST_UPSTREAM_KEY")
    with serve_proxy(xml) as url, httpx.Client(base_url=url, timeout=10) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": "Bearer sk-client-key", "x-api-key": "sk-client-key"},
        )
        assert r.status_code == 200
        got = upstream.recorder.last
        assert got.header_all("authorization") == ["Bearer sk-server-side-key"]
        assert "sk-client-key" not in json.dumps(got.raw_headers)

        r = client.post(
            "/v1/messages",
            json={"model": ANTHROPIC_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": "sk-client-key", "authorization": "Bearer sk-client-key",
                     "anthropic-version": "2023-06-01"},
        )
        assert r.status_code == 200
        got = upstream.recorder.last
        assert got.header_all("x-api-key") == ["sk-server-side-key"]
        assert "sk-client-key" not in json.dumps(got.raw_headers)
