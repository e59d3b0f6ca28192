"""The response cache as clients see it: hits in either form through both SDKs,
tenant isolation, opt-outs, what is never stored, coalescing, Redis."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai
import pytest

from tests.conftest import serve_proxy

OPENAI_BODY = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "cache me"}]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-a"}


def _config(upstream_url: str, cache: str = "") -> str:
    return f"""<performance_optimization>
  {cache}
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""


@pytest.fixture(scope="module")
def cached_url(fake_upstream_server):
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        yield url


def _post(url: str, body: dict, key: str = "sk-a", **headers) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=15,
                      headers={"authorization": f"Bearer {key}", **headers})


def _unique(text: str) -> dict:
    return {**OPENAI_BODY, "messages": [{"role": "user", "content": f"{text} {time.monotonic_ns()}"}]}


def test_second_identical_request_is_a_hit(cached_url, upstream):
    body = _unique("hit")
    first, second = _post(cached_url, body), _post(cached_url, body)
    assert first.headers["x-ctxwarden-cache"] == "miss"
    assert second.headers["x-ctxwarden-cache"] == "hit"
    assert second.json() == first.json()
    assert len(upstream.recorder) == 1


def test_tenants_never_share_entries(cached_url, upstream):
    body = _unique("tenant")
    assert _post(cached_url, body, key="sk-a").headers["x-ctxwarden-cache"] == "miss"
    assert _post(cached_url, body, key="sk-b").headers["x-ctxwarden-cache"] == "miss"
    assert _post(cached_url, body, key="sk-b").headers["x-ctxwarden-cache"] == "hit"
    assert len(upstream.recorder) == 2


def test_fields_that_change_the_answer_change_the_key(cached_url, upstream):
    body = _unique("fields")
    _post(cached_url, body)
    for change in ({"max_tokens": 5}, {"seed": 1}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
                   {"response_format": {"type": "json_object"}}, {"model": "gpt-4o"}):
        assert _post(cached_url, {**body, **change}).headers["x-ctxwarden-cache"] == "miss", change
    assert _post(cached_url, {**body, "stream": False}).headers["x-ctxwarden-cache"] == "hit"


def test_json_answer_replays_as_a_stream_the_sdk_parses(cached_url, upstream):
    body = _unique("json-then-sse")
    client = openai.OpenAI(base_url=cached_url + "/v1", api_key="sk-a", max_retries=0)
    plain = client.chat.completions.create(**body)
    raw = client.chat.completions.with_raw_response.create(**body, stream=True,
                                                          stream_options={"include_usage": True})
    assert raw.headers["x-ctxwarden-cache"] == "hit"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None
    assert len(upstream.recorder) == 1


def test_streamed_answer_is_recorded_and_replays_as_json(cached_url, upstream):
    body = _unique("sse-then-json")
    client = openai.OpenAI(base_url=cached_url + "/v1", api_key="sk-a", max_retries=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True)
                       if c.choices)
    raw = client.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-ctxwarden-cache"] == "hit"
    assert raw.parse().choices[0].message.content == streamed
    assert len(upstream.recorder) == 1


def test_anthropic_hits_in_both_forms(cached_url, upstream):
    client = anthropic.Anthropic(base_url=cached_url, api_key="sk-ant-a", max_retries=0)
    params = dict(model="claude-test-model", max_tokens=64, extra_body={"temperature": 0},
                  messages=[{"role": "user", "content": f"anthropic {time.monotonic_ns()}"}])
    with client.messages.stream(**params) as stream:
        live = stream.get_final_message()
    raw = client.messages.with_raw_response.create(**params)
    assert raw.headers["x-ctxwarden-cache"] == "hit"
    assert raw.parse().content[0].text == live.content[0].text
    with client.messages.stream(**params) as stream:
        replayed = stream.get_final_message()
    assert replayed.content[0].text == live.content[0].text
    assert len(upstream.recorder) == 1


def test_cache_control_opt_outs(cached_url, upstream):
    body = _unique("opt-out")
    assert _post(cached_url, body, **{"cache-control": "no-store"}).headers["x-ctxwarden-cache"] == "bypass"
    assert _post(cached_url, body).headers["x-ctxwarden-cache"] == "miss", "no-store stored nothing"
    assert _post(cached_url, body, **{"cache-control": "no-cache"}).headers["x-ctxwarden-cache"] == "miss"
    assert _post(cached_url, body).headers["x-ctxwarden-cache"] == "hit"
    assert len(upstream.recorder) == 3


def test_sampled_requests_are_not_cached_unless_configured(cached_url, fake_upstream_server, upstream):
    body = {**_unique("sampled"), "temperature": 0.7}
    assert _post(cached_url, body).headers["x-ctxwarden-cache"] == "bypass"
    no_temperature = {k: v for k, v in _unique("default temperature").items() if k != "temperature"}
    assert _post(cached_url, no_temperature).headers["x-ctxwarden-cache"] == "bypass"
    with serve_proxy(_config(fake_upstream_server.url, '<cache cache_sampled="true"/>')) as url:
        _post(url, body)
        assert _post(url, body).headers["x-ctxwarden-cache"] == "hit"


def test_errors_and_broken_streams_are_never_stored(cached_url, upstream):
    body = _unique("errors")
    assert _post(cached_url, body, **{"x-fake-status": "500"}).status_code == 500
    assert _post(cached_url, body).headers["x-ctxwarden-cache"] == "miss"
    stream_body = {**_unique("broken"), "stream": True}
    broken = _post(cached_url, stream_body, **{"x-fake-fault": "reset-mid-stream"})
    assert b"error" in broken.content
    assert _post(cached_url, stream_body).headers["x-ctxwarden-cache"] == "miss"


async def test_fifty_identical_requests_make_one_upstream_call(cached_url, upstream):
    body = _unique("coalesce")
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client:
        responses = await asyncio.gather(*[
            client.post(cached_url + "/v1/chat/completions", json=body,
                        headers={"authorization": "Bearer sk-a", "x-fake-delay": "0.5"})
            for _ in range(50)])
    assert len(upstream.recorder) == 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("x-ctxwarden-coalesced") == "1" for r in responses) == 49


async def test_streaming_followers_get_the_same_events(cached_url, upstream):
    body = {**_unique("coalesce-stream"), "stream": True}
    headers = {"authorization": "Bearer sk-a", "x-fake-chunks": "5", "x-fake-chunk-delay": "0.05"}
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*[
            client.post(cached_url + "/v1/chat/completions", json=body, headers=headers) for _ in range(10)])
    assert len(upstream.recorder) == 1
    assert len({r.content for r in responses}) == 1 and b"[DONE]" in responses[0].content


async def test_leader_failure_reaches_followers_and_the_next_request_retries(cached_url, upstream):
    body = _unique("leader-fails")
    headers = {"authorization": "Bearer sk-a", "x-fake-delay": "0.3", "x-fake-status": "503"}
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*[
            client.post(cached_url + "/v1/chat/completions", json=body, headers=headers) for _ in range(5)])
    assert {r.status_code for r in responses} == {503}
    assert len(upstream.recorder) == 1
    assert _post(cached_url, body).status_code == 200
    assert len(upstream.recorder) == 2


def _redis_config(upstream_url: str, url: str) -> str:
    return _config(upstream_url, f'<cache backend="redis" redis_url="{url}" key_prefix="t{time.monotonic_ns()}:"/>')


def test_replicas_share_answers_through_redis(fake_upstream_server, upstream, redis_url):
    config = _redis_config(fake_upstream_server.url, redis_url)
    body = _unique("replicas")
    with serve_proxy(config) as first, serve_proxy(config) as second:
        assert _post(first, body).headers["x-ctxwarden-cache"] == "miss"
        assert _post(second, body).headers["x-ctxwarden-cache"] == "hit"
        assert _post(second, body, key="sk-other").headers["x-ctxwarden-cache"] == "miss"
    assert len(upstream.recorder) == 2


def test_redis_outage_never_fails_a_request(fake_upstream_server, upstream, own_redis):
    with serve_proxy(_redis_config(fake_upstream_server.url, own_redis.url)) as url:
        body = _unique("outage")
        _post(url, body)
        assert _post(url, body).headers["x-ctxwarden-cache"] == "hit"
        own_redis.stop()
        during = [_post(url, _unique(f"down {i}")) for i in range(3)]
        assert {r.status_code for r in during} == {200}
        metrics = httpx.get(url + "/metrics").text
        failures = [line for line in metrics.splitlines()
                    if line.startswith('ctxwarden_cache_backend_failures_total{backend="redis"}')]
        assert failures and float(failures[0].rsplit(" ", 1)[1]) >= 1
        own_redis.start()
        again = _unique("back")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            _post(url, again)
            if _post(url, again).headers["x-ctxwarden-cache"] == "hit":
                break
            time.sleep(0.5)
        else:
            pytest.fail("caching did not resume after Redis came back")
