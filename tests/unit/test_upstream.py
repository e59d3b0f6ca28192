import httpx
import pytest
import respx

from ctxwarden.dialects import get_dialect
from ctxwarden.config import ConfigError, ServerSettings, Timeouts, Upstream
from ctxwarden.errors import UpstreamTimeout, UpstreamUnavailable
from ctxwarden.routing import Routes, Target
from ctxwarden.upstream import UpstreamClient, relay, request_headers, response_headers

OPENAI = Upstream("openai", "openai", "https://api.example.test", timeouts=Timeouts(read=1))
ANTHROPIC = Upstream("anthropic", "anthropic", "https://anthropic.example.test", api_key_env="TEST_ANTHROPIC_KEY")

CLIENT_HEADERS = [
    (b"host", b"127.0.0.1:8788"), (b"connection", b"keep-alive, x-hop"), (b"x-hop", b"1"),
    (b"keep-alive", b"timeout=5"), (b"content-length", b"10"), (b"authorization", b"Bearer sk-client"),
    (b"openai-organization", b"org-1"), (b"x-unknown", b"kept"), (b"te", b"trailers"),
]


def test_request_headers_drop_hop_by_hop_and_keep_the_rest():
    names = [k for k, _ in request_headers(CLIENT_HEADERS, OPENAI, None)]
    assert names == [b"authorization", b"openai-organization", b"x-unknown"]


def test_configured_key_replaces_the_clients_credential():
    headers = dict(request_headers(CLIENT_HEADERS + [(b"x-api-key", b"client")], ANTHROPIC, "sk-ant-server"))
    assert headers[b"x-api-key"] == b"sk-ant-server"
    assert b"authorization" not in headers
    openai_headers = dict(request_headers(CLIENT_HEADERS, OPENAI, "sk-server"))
    assert openai_headers[b"authorization"] == b"Bearer sk-server"


def test_response_headers_drop_length_and_hop_by_hop():
    raw = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked"), (b"x-request-id", b"r1"),
           (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert response_headers(raw) == [(b"x-request-id", b"r1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TEST_ANTHROPIC_KEY", raising=False)
    with pytest.raises(ConfigError) as caught:
        Routes.resolve((ANTHROPIC,))
    assert "TEST_ANTHROPIC_KEY" in str(caught.value)


@respx.mock
async def test_send_builds_url_with_query_and_injects_key(monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-server")
    route = respx.post("https://anthropic.example.test/v1/messages?beta=true").respond(200, json={"ok": 1})
    client = UpstreamClient(ServerSettings(), transport=httpx.AsyncHTTPTransport())   # respx mocks httpx's pool
    target = Routes.resolve((ANTHROPIC,)).route("anthropic", None)
    assert target == Target(ANTHROPIC, "sk-ant-server")
    response = await client.send(target, "POST", "/v1/messages", b"beta=true",
                                 [(b"x-api-key", b"client"), (b"anthropic-beta", b"b1")], b"{}")
    await response.aread()
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-server"
    assert sent.headers["anthropic-beta"] == "b1"
    assert sent.headers["host"] == "anthropic.example.test"
    await client.aclose()


@respx.mock
async def test_connect_error_is_502_and_timeout_is_504():
    client = UpstreamClient(ServerSettings(), transport=httpx.AsyncHTTPTransport())   # respx mocks httpx's pool
    target = Target(OPENAI, None)
    respx.get("https://api.example.test/v1/models").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamUnavailable):
        await client.send(target, "GET", "/v1/models", b"", [], None)
    respx.get("https://api.example.test/v1/files").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout):
        await client.send(target, "GET", "/v1/files", b"", [], None)
    await client.aclose()


async def _body_of(response) -> bytes:
    chunks = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    return b"".join(chunks)


async def test_small_answer_is_relayed_whole_with_extra_headers():
    upstream = httpx.Response(201, headers={"content-type": "application/json", "x-request-id": "r1",
                                            "content-length": "7"}, stream=httpx.ByteStream(b'{"a":1}'))
    relayed = await relay(upstream, [(b"x-ctxwarden-tokens-before", b"7")], stream_error_dialect=get_dialect("openai"))
    headers = dict(relayed.raw_headers)
    assert relayed.status_code == 201
    assert headers[b"content-length"] == b"7"
    assert headers[b"x-request-id"] == b"r1" and headers[b"x-ctxwarden-tokens-before"] == b"7"
    assert await _body_of(relayed) == b'{"a":1}'


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b'data: {"id":1}\n\n'
        raise httpx.RemoteProtocolError("peer closed connection")

    async def aclose(self):
        pass


@pytest.mark.parametrize("dialect, marker", [("openai", b'data: {"error"'), ("anthropic", b"event: error")])
async def test_stream_broken_mid_way_ends_with_the_dialects_error_event(dialect, marker):
    upstream = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_BrokenStream(),
                              request=httpx.Request("POST", "https://x.test/v1/chat/completions"))
    relayed = await relay(upstream, [], stream_error_dialect=get_dialect(dialect))
    body = await _body_of(relayed)
    assert body.startswith(b'data: {"id":1}\n\n')
    assert marker in body and body.endswith(b"\n\n")
