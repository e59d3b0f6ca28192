"""Cross-replica coalescing over real HTTP: three `ctxwarden serve` processes
on one real redis-server, a slow fake upstream, and many identical requests at
once spread over the three. Counts are asserted, never durations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import cli_server

REPLICAS = 3
REQUESTS = 50
# Long enough that every request arrives while the leader's call runs.
UPSTREAM_DELAY = "1.5"


def _config(upstream_url: str, redis_url: str, prefix: str) -> str:
    return f"""<performance_optimization>
  <cache backend="redis" redis_url="{redis_url}" key_prefix="{prefix}" redis_timeout="2" coalesce_wait="20"/>
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""


@pytest.fixture(scope="module")
def replicas(fake_upstream_server, redis_url, tmp_path_factory) -> Iterator[list[str]]:
    pytest.importorskip("redis")
    path = tmp_path_factory.mktemp("replicas") / "replicas.xml"
    path.write_text(_config(fake_upstream_server.url, redis_url, f"coalesce{time.monotonic_ns()}:"))
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(cli_server(path))[0] for _ in range(REPLICAS)]


def _body(text: str, stream: bool = False) -> dict:
    body = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


async def _send_all(urls: list[str], bodies: list[dict], key: str = "sk-replicas") -> list[httpx.Response]:
    headers = {"authorization": f"Bearer {key}", "x-fake-delay": UPSTREAM_DELAY}
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(*[
            client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=headers)
            for i, body in enumerate(bodies)])


def _calls(recorder, text: str) -> int:
    return sum(1 for r in recorder.matching("/v1/chat/completions") if text in r.body.decode(errors="replace"))


def _metric(urls: list[str], name: str) -> float:
    total = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_identical_requests_on_three_replicas_make_one_upstream_call(replicas, upstream):
    text = f"coalesce across replicas {uuid.uuid4().hex}"
    fallbacks_before = _metric(replicas, "ctxwarden_cache_replica_fallbacks_total")
    responses = asyncio.run(_send_all(replicas, [_body(text)] * REQUESTS))

    assert [r.status_code for r in responses] == [200] * REQUESTS
    assert _calls(upstream.recorder, text) == 1, "one upstream call for all three replicas"
    assert len({r.content for r in responses}) == 1, "everyone got the same answer"
    assert responses[0].json()["choices"][0]["message"]["content"]
    outcomes = [r.headers["x-ctxwarden-cache"] for r in responses]
    assert outcomes.count("miss") == 1 and outcomes.count("hit") == REQUESTS - 1
    # the other replicas waited for the leader's replica and served its stored answer
    assert _metric(replicas, "ctxwarden_cache_replica_coalesced_total") >= 1
    assert _metric(replicas, "ctxwarden_cache_replica_fallbacks_total") == fallbacks_before


def test_streaming_and_json_requests_share_one_call_across_replicas(replicas, upstream):
    text = f"coalesce streams across replicas {uuid.uuid4().hex}"
    bodies = [_body(text, stream=i % 2 == 0) for i in range(12)]
    responses = asyncio.run(_send_all(replicas, bodies))

    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert _calls(upstream.recorder, text) == 1
    streams = [r for r, b in zip(responses, bodies) if b.get("stream")]
    wholes = [r for r, b in zip(responses, bodies) if not b.get("stream")]
    assert all(r.headers["content-type"].startswith("text/event-stream") for r in streams)
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in streams)
    assert len({r.content for r in wholes}) == 1
    answer = wholes[0].json()["choices"][0]["message"]["content"]
    for r in streams:
        pieces = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in pieces if c["choices"]) == answer


def test_tenants_do_not_coalesce_across_replicas(replicas, upstream):
    text = f"coalesce per tenant {uuid.uuid4().hex}"

    async def both() -> list[list[httpx.Response]]:
        return await asyncio.gather(_send_all(replicas, [_body(text)] * 6, key="sk-tenant-one"),
                                    _send_all(replicas, [_body(text)] * 6, key="sk-tenant-two"))

    one, two = asyncio.run(both())
    assert all(r.status_code == 200 for r in one + two)
    assert _calls(upstream.recorder, text) == 2, "one call per credential, never one answer for both"
    keys = {r.header("authorization") for r in upstream.recorder.matching("/v1/chat/completions")
            if text in r.body.decode(errors="replace")}
    assert keys == {"Bearer sk-tenant-one", "Bearer sk-tenant-two"}
