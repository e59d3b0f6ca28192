"""Issue 11, point 6: paths with dot segments or encoded slashes are refused
with a 400 in the dialect's error shape, before routing, and nothing reaches
the upstream; accepted paths reach it exactly as the client wrote them."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.conftest import serve_proxy
from tests.servers import proxy_config_xml


def raw_request(base_url: str, method: str, target: str, headers: dict | None = None,
                body: bytes = b"") -> tuple[int, dict, bytes]:
    """A request whose target is sent byte for byte (httpx would resolve `..`)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.mark.parametrize("method, target", [
    ("POST", "/v1/x/../chat/completions"),
    ("GET", "/v1/../_ctxwarden/config"),
    ("GET", "/v1/%2e%2e/%2e%2e/admin"),
    ("GET", "/v1/%2E%2e/_ctxwarden/config"),
    ("GET", "/v1/./models"),
    ("GET", "/v1/files%2F..%2Fadmin"),
    ("GET", "/v1/files%5c..%5cadmin"),
    ("GET", "/_ctxwarden/../v1/models"),
])
def test_traversal_is_400_openai_shape_and_nothing_sent(proxy_url, upstream, method, target):
    status, headers, body = raw_request(proxy_url, method, target, {"content-type": "application/json"},
                                        CHAT_BODY if method == "POST" else b"")
    assert status == 400, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert len(upstream.recorder) == 0


def test_traversal_under_messages_is_400_anthropic_shape(proxy_url, upstream):
    status, _, body = raw_request(proxy_url, "POST", "/v1/messages/../models",
                                  {"anthropic-version": "2023-06-01", "content-type": "application/json"}, b"{}")
    assert status == 400
    parsed = json.loads(body)
    assert parsed["type"] == "error" and parsed["error"]["type"] == "invalid_request_error"
    assert len(upstream.recorder) == 0


def test_accepted_path_is_forwarded_with_its_escapes(proxy_url, upstream):
    # Decoded before forwarding, %3F would have become a query string upstream.
    status, _, _ = raw_request(proxy_url, "GET", "/v1/files/a%20b%3Fc?limit=1")
    assert status == 200
    sent = upstream.recorder.last
    assert sent.query == "limit=1"
    assert sent.path in ("/v1/files/a b?c", "/v1/files/a b%3Fc")  # as Starlette shows it


@pytest.fixture(scope="module")
def prefixed_proxy_url(fake_upstream_server):
    xml = proxy_config_xml(fake_upstream_server.url + "/prefix")
    with serve_proxy(xml) as url:
        yield url


def test_base_url_prefix_is_never_escaped(prefixed_proxy_url, upstream):
    status, _, _ = raw_request(prefixed_proxy_url, "GET", "/v1/models/x")
    assert status == 200
    assert upstream.recorder.last.path == "/prefix/v1/models/x"
    upstream.recorder.clear()
    for target in ("/v1/../../admin", "/v1/%2e%2e/%2e%2e/admin", "/v1/a%2f..%2f..%2f..%2fadmin"):
        status, _, _ = raw_request(prefixed_proxy_url, "GET", target)
        assert status == 400, target
    assert len(upstream.recorder) == 0
