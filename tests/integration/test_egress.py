"""Egress like other HTTP tools: the upstream pool honours HTTP(S)_PROXY and
NO_PROXY from the environment (unless server/@trust_env is false), and an
upstream's ca_bundle verifies a private gateway's certificate. Real sockets
on loopback: a forward proxy that answers itself, a TLS server with a
certificate made for the test."""

from __future__ import annotations

import ssl

import pytest

from ctxwarden.config import ConfigError, ServerSettings, Timeouts, Upstream, parse_config
from ctxwarden.errors import UpstreamUnavailable
from ctxwarden.routing import Target
from ctxwarden.upstream import UpstreamClient
from tests.integration._helpers import raw_server
from tests.servers import closed_port

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"via\": 1}\n"


def answering_server(context: ssl.SSLContext | None = None):
    """A server that answers each request 200 and closes: (port, heads, connections)."""
    return raw_server(lambda head: ANSWER, close_after=True, context=context)


def request_lines(heads: list[bytes]) -> list[bytes]:
    return [head.split(b"\r\n", 1)[0] for head in heads]


def target(url: str, ca_bundle: str | None = None) -> Target:
    upstream = Upstream("egress", "openai", url, timeouts=Timeouts(connect=5, read=5, write=5, pool=5),
                        ca_bundle=ca_bundle)
    return Target(upstream, None)


async def get(client: UpstreamClient, url: str, ca_bundle: str | None = None) -> bytes:
    response = await client.send(target(url, ca_bundle), "GET", "/v1/models", b"", [], None)
    return await response.aread()


async def test_http_proxy_from_the_environment_is_used(monkeypatch):
    async with answering_server() as (port, heads, _):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        upstream = f"http://127.0.0.1:{closed_port()}"   # nothing listens there: only the proxy can answer
        client = UpstreamClient(ServerSettings())
        try:
            assert await get(client, upstream) == b'{"via": 1}\n'
        finally:
            await client.aclose()
    assert request_lines(heads) == [f"GET {upstream}/v1/models HTTP/1.1".encode()], "an absolute URI: a forward proxy's request"


@pytest.mark.parametrize("how", ["no_proxy", "trust_env_off"])
async def test_no_proxy_and_trust_env_off_go_direct(monkeypatch, how):
    async with answering_server() as (proxy_port, proxy_heads, _), answering_server() as (port, heads, _):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
        if how == "no_proxy":
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client = UpstreamClient(ServerSettings(trust_env=how != "trust_env_off"))
        try:
            assert await get(client, f"http://127.0.0.1:{port}") == b'{"via": 1}\n'
        finally:
            await client.aclose()
    assert proxy_heads == [] and request_lines(heads) == [b"GET /v1/models HTTP/1.1"]


async def test_netrc_credentials_are_for_the_forward_proxy_only(monkeypatch, tmp_path):
    # the environment is read once per upstream host, ~/.netrc included: an
    # entry for the upstream's host never becomes its Authorization
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with answering_server() as (port, heads, _):
        client = UpstreamClient(ServerSettings())
        try:
            for _ in range(2):
                response = await client.send(target(f"http://127.0.0.1:{port}"), "GET", "/v1/models", b"",
                                             [(b"authorization", b"Bearer sk-client")], None)
                assert await response.aread() == b'{"via": 1}\n'
        finally:
            await client.aclose()
    assert len(heads) == 2
    for head in heads:
        assert b"authorization: bearer sk-client" in head.lower() and b"basic" not in head.lower()


async def test_ca_bundle_verifies_a_private_certificate(certificate, monkeypatch):
    cert, key = certificate
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with answering_server(context) as (port, heads, _):
        url = f"https://127.0.0.1:{port}"
        client = UpstreamClient(ServerSettings())
        try:
            with pytest.raises(UpstreamUnavailable):   # not signed by a public CA
                await get(client, url)
            assert await get(client, url, ca_bundle=str(cert)) == b'{"via": 1}\n'
        finally:
            await client.aclose()
    assert request_lines(heads) == [b"GET /v1/models HTTP/1.1"], "the unverified attempt sent nothing"


def test_a_ca_bundle_that_cannot_be_read_is_a_config_error(tmp_path):
    xml = ('<performance_optimization><upstreams><upstream name="u" dialect="openai" '
           'base_url="https://gw.example" ca_bundle="{}"/></upstreams></performance_optimization>')
    with pytest.raises(ConfigError, match="ca_bundle"):
        parse_config(xml.format(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_bundle"):
        parse_config(xml.format(tmp_path / "junk.pem"))
