"""Retries and fallbacks over real HTTP, with the official SDKs (their own
retries off, so what retries is the proxy): the fake upstream answers a
scripted run of failures (x-fake-script), a door in front of it drops
connections, a closed port refuses them, and the second fake is the fallback."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import serve_proxy
from tests.fake_upstream import Scripts, error_body, expected_reply
from tests.integration._helpers import ANTHROPIC_HEADERS, OPENAI_HEADERS, anthropic_body, openai_body
from tests.integration.test_hardening_uploads import metric, wait_until
from tests.servers import closed_port

FAST = 'backoff="0.01" max_backoff="0.5"'


class DroppingDoor:
    """A TCP door in front of an upstream: it closes its first `drops`
    connections as soon as a request arrives on them, without a byte of
    answer, and pipes every later one through both ways."""

    def __init__(self, port: int, drops: int) -> None:
        self.port, self.drops = port, drops
        self.connections = 0
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0),
                                                  self.loop).result(10)
        self.server = server
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        async def close() -> None:
            # the connections still piped (kept alive by the proxy's pool) end before the loop does
            self.server.close()
            piping = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in piping:
                task.cancel()
            await asyncio.gather(*piping, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.drops:
            await reader.read(65536)
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
def door(fake_upstream_server) -> Iterator[DroppingDoor]:
    door = DroppingDoor(fake_upstream_server.port, drops=2)
    with door as url:
        door.url = url
        yield door


@pytest.fixture(scope="module")
def retry_proxy_url(fake_upstream_server, local_upstream_server, door) -> Iterator[str]:
    main, backup = fake_upstream_server.url, local_upstream_server.url
    dead = f"http://127.0.0.1:{closed_port()}"
    xml = f"""<performance_optimization><upstreams>
      <upstream name="openai" dialect="openai" base_url="{main}"><retry attempts="2" {FAST}/></upstream>
      <upstream name="anthropic" dialect="anthropic" base_url="{main}">
        <retry attempts="2" {FAST}/>
        <fallback upstream="anthropic-backup"/>
      </upstream>
      <upstream name="anthropic-backup" dialect="anthropic" base_url="{backup}"><model>backup-only</model></upstream>
      <upstream name="primary" dialect="openai" base_url="{main}">
        <model>fb-*</model>
        <retry attempts="1" {FAST}/>
        <fallback upstream="dead" model="fb-dead-*"/>
        <fallback upstream="backup"/>
      </upstream>
      <upstream name="dead" dialect="openai" base_url="{dead}" connect_timeout="2">
        <model>dead-*</model><retry attempts="1" {FAST}/>
      </upstream>
      <upstream name="flaky" dialect="openai" base_url="{door.url}">
        <model>flaky-*</model><retry attempts="2" {FAST} on="connect"/>
      </upstream>
      <upstream name="patient" dialect="openai" base_url="{main}">
        <model>patient-*</model><retry attempts="1" backoff="0.01" max_backoff="30"/>
      </upstream>
      <upstream name="backup" dialect="openai" base_url="{backup}"><model>backup-only</model></upstream>
    </upstreams></performance_optimization>"""
    with serve_proxy(xml) as url:
        yield url


@pytest.fixture(scope="module")
def client(retry_proxy_url) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=retry_proxy_url + "/v1", api_key="sk-test", max_retries=0, timeout=15) as client:
        yield client


def _script(*steps: int, **headers: str) -> tuple[str, dict[str, str]]:
    """A fresh script id, and the headers that make the fakes answer `steps` first."""
    script_id = uuid.uuid4().hex
    return script_id, {"x-fake-script": ",".join(map(str, steps)), "x-fake-script-id": script_id, **headers}


def _received(fake, script_id: str) -> list:
    return [r for r in fake.recorder.requests if r.header("x-fake-script-id") == script_id]


def _counted(url: str, name: str, **labels: str) -> bool:
    """Whether the metric has counted it yet (a request is counted just after its answer is sent)."""
    return wait_until(lambda: metric(url, name, **labels) >= 1)


def test_a_503_and_a_429_are_retried_with_the_same_bytes(client, retry_proxy_url, upstream):
    script_id, headers = _script(503, 429, **{"x-fake-retry-after-ms": "10"})
    raw = client.chat.completions.with_raw_response.create(
        **openai_body("retry me"), extra_headers=headers)
    assert raw.parse().choices[0].message.content == expected_reply("retry me")
    assert raw.headers["x-ctxwarden-attempts"] == "3"
    bodies = {r.body for r in _received(upstream, script_id)}
    assert Scripts.seen(script_id) == 3 and len(bodies) == 1
    assert _counted(retry_proxy_url, "ctxwarden_upstream_retries_total", upstream="openai", reason="503")
    assert _counted(retry_proxy_url, "ctxwarden_upstream_retries_total", upstream="openai", reason="429")


def test_when_every_try_fails_the_last_answer_reaches_the_client_unchanged(retry_proxy_url, upstream):
    script_id, headers = _script(503, 500, 502)
    response = httpx.post(retry_proxy_url + "/v1/chat/completions", json=openai_body("doomed"),
                          headers={**OPENAI_HEADERS, **headers, "accept-encoding": "identity"}, timeout=15)
    assert response.status_code == 502
    assert response.content == error_body("openai", 502)
    assert response.headers["x-fake-upstream"] == "main" and response.headers["x-ctxwarden-attempts"] == "3"
    assert Scripts.seen(script_id) == 3


def test_a_wait_longer_than_max_backoff_is_not_retried(client, upstream):
    script_id, headers = _script(429, **{"x-fake-retry-after": "60"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**openai_body("later"), extra_headers=headers)
    assert caught.value.response.headers["retry-after"] == "60"
    assert "x-ctxwarden-attempts" not in caught.value.response.headers
    assert Scripts.seen(script_id) == 1


def test_a_client_error_is_not_retried_nor_handed_to_a_fallback(client, upstream, local_upstream):
    script_id, headers = _script(400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**openai_body("bad", model="fb-1"), extra_headers=headers)
    assert Scripts.seen(script_id) == 1 and len(local_upstream.recorder) == 0


def test_a_stream_is_retried_while_the_upstream_answers_an_error_status(client, upstream):
    script_id, headers = _script(503)
    stream = client.chat.completions.create(**openai_body("stream me", stream=True), extra_headers=headers)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == expected_reply("stream me") and Scripts.seen(script_id) == 2


def test_a_stream_broken_off_after_it_began_is_not_retried(client, retry_proxy_url, upstream):
    marker = uuid.uuid4().hex
    headers = {"x-fake-fault": "reset-mid-stream", "x-fake-chunks": "8", "x-test-marker": marker}
    with pytest.raises(openai.APIError):
        stream = client.chat.completions.create(**openai_body("break me", stream=True), extra_headers=headers)
        for _ in stream:
            pass
    assert [r.header("x-test-marker") for r in upstream.recorder.requests].count(marker) == 1


def test_fallbacks_take_over_in_order_for_their_models(client, retry_proxy_url, upstream, local_upstream):
    script_id, headers = _script(503, 503)
    raw = client.chat.completions.with_raw_response.create(**openai_body("fall", model="fb-1"),
                                                           extra_headers=headers)
    assert raw.parse().choices[0].message.content == expected_reply("fall")
    assert raw.headers["x-fake-upstream"] == "local" and raw.headers["x-ctxwarden-attempts"] == "3"
    assert len(_received(local_upstream, script_id)) == 1
    assert _counted(retry_proxy_url, "ctxwarden_upstream_fallbacks_total", **{"from": "primary", "to": "backup"})

    # fb-dead-* first goes to "dead" (refused, retried once), then to "backup"
    script_id, headers = _script(503, 503)
    raw = client.chat.completions.with_raw_response.create(**openai_body("fall", model="fb-dead-1"),
                                                           extra_headers=headers)
    assert raw.headers["x-fake-upstream"] == "local" and raw.headers["x-ctxwarden-attempts"] == "5"
    assert _counted(retry_proxy_url, "ctxwarden_upstream_retries_total", upstream="dead", reason="connect")
    assert _counted(retry_proxy_url, "ctxwarden_upstream_fallbacks_total", **{"from": "dead", "to": "backup"})


def test_dropped_connections_are_retried(client, retry_proxy_url, door, upstream):
    answer = client.chat.completions.create(**openai_body("through the door", model="flaky-1"))
    assert answer.choices[0].message.content == expected_reply("through the door")
    assert door.connections == 3
    assert _counted(retry_proxy_url, "ctxwarden_upstream_retries_total", upstream="flaky", reason="connect")


def test_anthropic_overloaded_is_retried_then_handed_to_its_fallback(retry_proxy_url, upstream, local_upstream):
    script_id, headers = _script(529, 529, 529)
    with anthropic.Anthropic(base_url=retry_proxy_url, api_key="sk-ant-test", max_retries=0, timeout=15) as sdk:
        raw = sdk.messages.with_raw_response.create(**anthropic_body("overloaded"), extra_headers=headers)
    assert raw.parse().content[0].text == expected_reply("overloaded")
    assert raw.headers["x-fake-upstream"] == "local" and Scripts.seen(script_id) == 4
    assert _counted(retry_proxy_url, "ctxwarden_upstream_retries_total", upstream="anthropic", reason="529")
    assert _counted(retry_proxy_url, "ctxwarden_upstream_fallbacks_total",
                    **{"from": "anthropic", "to": "anthropic-backup"})


def test_other_paths_are_retried_too(retry_proxy_url, upstream):
    script_id, headers = _script(503)
    response = httpx.get(retry_proxy_url + "/v1/models", headers={**ANTHROPIC_HEADERS, **headers}, timeout=15)
    assert response.status_code == 200 and response.headers["x-ctxwarden-attempts"] == "2"
    assert Scripts.seen(script_id) == 2


def test_a_client_gone_during_the_wait_stops_the_retries(retry_proxy_url, upstream):
    script_id, headers = _script(429, 429, **{"x-fake-retry-after": "20"})
    with pytest.raises(httpx.TimeoutException):
        httpx.post(retry_proxy_url + "/v1/chat/completions", json=openai_body("gone", model="patient-1"),
                   headers={**OPENAI_HEADERS, **headers}, timeout=1)
    assert _counted(retry_proxy_url, "ctxwarden_requests_total", status="499")
    assert Scripts.seen(script_id) == 1
