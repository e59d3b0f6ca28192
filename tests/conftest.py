"""Shared fixtures: fake upstreams, the proxy in front of them, and clients.

Servers are session-scoped (started once, on first use); the function-scoped
`upstream` / `local_upstream` fixtures clear the fakes' recorders so that each
test sees only its own traffic.

    upstream            ServedFake for the main fake (openai + anthropic upstreams)
    local_upstream      ServedFake for the second fake (upstream "local", model llama-*)
    proxy_url           the proxy in front of both (config: servers.proxy_config_xml)
    proxy_config        its parsed Config
    refused_proxy_url   a proxy whose upstreams point at a closed port (502)
    slow_proxy_url      a proxy with read_timeout=0.5 s in front of the main fake (504)
    small_body_proxy_url  a proxy with max_body_bytes=65536 (413)
    http                httpx.Client(base_url=proxy_url)
    openai_client       openai.OpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0)
    anthropic_client    anthropic.Anthropic(base_url=proxy_url, api_key="sk-ant-test", max_retries=0)
    async_openai_client, async_anthropic_client   the async counterparts (function-scoped)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest

# The proxy honours HTTP(S)_PROXY like other HTTP tools (server/@trust_env);
# a CI machine's proxy must not stand between the tests and their loopback servers.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, (os.environ.get(_name), "127.0.0.1", "localhost", "::1")))

# The real redis-server fixtures (redis_server, redis_url, own_redis).
pytest_plugins = ["tests.redis_server"]

from tests.fake_upstream import FakeUpstream, Recorder, create_fake_upstream
from tests.servers import closed_port, proxy_config_xml, serve_app

SMALL_BODY_LIMIT = 65536
SLOW_READ_TIMEOUT = 0.5


@dataclass
class ServedFake:
    url: str
    fake: FakeUpstream

    @property
    def recorder(self) -> Recorder:
        return self.fake.recorder

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- fakes


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[ServedFake]:
    fake = create_fake_upstream("main")
    with serve_app(fake.app) as url:
        yield ServedFake(url, fake)


@pytest.fixture(scope="session")
def local_upstream_server() -> Iterator[ServedFake]:
    fake = create_fake_upstream("local")
    with serve_app(fake.app) as url:
        yield ServedFake(url, fake)


# A stream an earlier test left running (a coalesced leader's answer fetched on
# for its followers, say) must not be counted as this test's when it ends.
QUIET_TIMEOUT = 20.0


def _quiet(served: ServedFake) -> ServedFake:
    served.recorder.wait_for(lambda rec: rec.streams_open == 0, timeout=QUIET_TIMEOUT)
    served.recorder.clear()
    return served


@pytest.fixture
def upstream(fake_upstream_server: ServedFake) -> ServedFake:
    return _quiet(fake_upstream_server)


@pytest.fixture
def local_upstream(local_upstream_server: ServedFake) -> ServedFake:
    return _quiet(local_upstream_server)


# --------------------------------------------------------------------------- proxies


def _proxy_app(xml: str):
    from ctxwarden.app import create_app
    from ctxwarden.config import parse_config

    return create_app(parse_config(xml))


@contextlib.contextmanager
def serve_proxy(xml: str) -> Iterator[str]:
    from ctxwarden.__main__ import SERVER_OPTIONS

    with serve_app(_proxy_app(xml), **SERVER_OPTIONS) as url:
        yield url


@pytest.fixture(scope="session")
def proxy_xml(fake_upstream_server: ServedFake, local_upstream_server: ServedFake) -> str:
    return proxy_config_xml(fake_upstream_server.url, fake_upstream_server.url, local_upstream_server.url)


@pytest.fixture(scope="session")
def proxy_config(proxy_xml: str):
    from ctxwarden.config import parse_config

    return parse_config(proxy_xml)


@pytest.fixture(scope="session")
def proxy_url(proxy_xml: str) -> Iterator[str]:
    with serve_proxy(proxy_xml) as url:
        yield url


@pytest.fixture(scope="session")
def refused_proxy_url() -> Iterator[str]:
    dead = f"http://127.0.0.1:{closed_port()}"
    with serve_proxy(proxy_config_xml(dead, dead, connect_timeout=2)) as url:
        yield url


@pytest.fixture(scope="session")
def slow_proxy_url(fake_upstream_server: ServedFake) -> Iterator[str]:
    xml = proxy_config_xml(fake_upstream_server.url, read_timeout=SLOW_READ_TIMEOUT)
    with serve_proxy(xml) as url:
        yield url


@pytest.fixture(scope="session")
def small_body_proxy_url(fake_upstream_server: ServedFake) -> Iterator[str]:
    xml = proxy_config_xml(fake_upstream_server.url, max_body_bytes=SMALL_BODY_LIMIT)
    with serve_proxy(xml) as url:
        yield url


# --------------------------------------------------------------------------- clients


@pytest.fixture(scope="session")
def http(proxy_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy_url, timeout=15) as client:
        yield client


@pytest.fixture(scope="session")
def openai_client(proxy_url: str):
    import openai

    client = openai.OpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0, timeout=15)
    yield client
    client.close()


@pytest.fixture(scope="session")
def anthropic_client(proxy_url: str):
    import anthropic

    client = anthropic.Anthropic(base_url=proxy_url, api_key="sk-ant-test", max_retries=0, timeout=15)
    yield client
    client.close()


@pytest.fixture
async def async_openai_client(proxy_url: str):
    import openai

    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0, timeout=15)
    yield client
    await client.close()


@pytest.fixture
async def async_anthropic_client(proxy_url: str):
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=proxy_url, api_key="sk-ant-test", max_retries=0, timeout=15)
    yield client
    await client.close()
