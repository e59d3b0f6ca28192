"""Hardening of the response cache (issue 11, points 8, 13 and 14), through the
real app on loopback, in front of a small upstream of this module's own:

* the query string is in the key, and every header that can carry a credential
  is in the tenant fingerprint (two callers differing only there never share);
* coalesced followers only get answers in an encoding they accepted;
* an answer above the cache's size limit is relayed intact and not stored, and
  a gzip bomb is relayed as the upstream sent it and not stored.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from typing import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ctxwarden.cache import MAX_ANSWER_BYTES
from tests.conftest import serve_proxy
from tests.servers import serve_app

LARGE = MAX_ANSWER_BYTES + 512 * 1024  # just above the limit
BOMB_DECODED = 4 * MAX_ANSWER_BYTES


def _answer(text: str) -> dict:
    return {"id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _large_body() -> bytes:
    body = json.dumps(_answer("x" * LARGE)).encode()
    assert len(body) > MAX_ANSWER_BYTES
    return body


class Upstream:
    """Answers /v1/chat/completions as the request's x-test-answer says:

    small (default)  a small JSON answer, gzipped when Accept-Encoding allows gzip
    large            a JSON answer above the cache limit, with Content-Length
    large-chunked    the same, chunked (no Content-Length)
    bomb             a gzip bomb: small on the wire, BOMB_DECODED bytes inflated
    x-test-delay: SECONDS  wait before answering (so identical requests overlap)
    """

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.large = _large_body()
        inner = json.dumps(_answer("a" * BOMB_DECODED)).encode()
        self.bomb = gzip.compress(inner, compresslevel=9, mtime=0)
        assert len(self.bomb) < 1 << 20
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append((dict(request.headers), request.scope["query_string"]))
        delay = float(request.headers.get("x-test-delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        kind = request.headers.get("x-test-answer", "small")
        if kind == "large":
            return Response(self.large, media_type="application/json")
        if kind == "large-chunked":
            data = self.large

            async def pieces():
                for i in range(0, len(data), 64 * 1024):
                    yield data[i:i + 64 * 1024]
            return StreamingResponse(pieces(), media_type="application/json")
        if kind == "bomb":
            return Response(self.bomb, media_type="application/json", headers={"content-encoding": "gzip"})
        text = "echo " + hashlib.sha256(body).hexdigest()[:12]
        data = json.dumps(_answer(text)).encode()
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gzip.compress(data, mtime=0), media_type="application/json",
                            headers={"content-encoding": "gzip"})
        return Response(data, media_type="application/json")


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream()
    with serve_app(upstream.app) as url:
        yield upstream, url


@pytest.fixture(scope="module")
def proxy(own_upstream) -> Iterator[str]:
    _, upstream_url = own_upstream
    xml = f"""<performance_optimization>
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""
    with serve_proxy(xml) as url:
        yield url


@pytest.fixture
def upstream(own_upstream) -> Upstream:
    own_upstream[0].calls.clear()
    return own_upstream[0]


def _body(label: str) -> dict:
    return {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "user", "content": f"{label} {time.monotonic_ns()}"}]}


def _post(url: str, body: dict, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    headers = {"authorization": "Bearer sk-a", **headers}
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def _cache(response: httpx.Response) -> str:
    return response.headers["x-ctxwarden-cache"]


# --------------------------------------------------------------------------- point 8: the key


@pytest.mark.parametrize("header,first,second", [
    ("x-goog-api-key", "goog-a", "goog-b"),
    ("api-key", "azure-a", "azure-b"),
    ("cookie", "session=a", "session=b"),
    ("openai-organization", "org-a", "org-b"),
    ("openai-project", "proj-a", "proj-b"),
    ("ocp-apim-subscription-key", "apim-a", "apim-b"),
    ("x-custom-auth-token", "t-a", "t-b"),
])
def test_callers_differing_only_in_a_credential_header_never_share(proxy, upstream, header, first, second):
    body = _body(f"cred {header}")
    assert _cache(_post(proxy, body, **{header: first})) == "miss"
    assert _cache(_post(proxy, body, **{header: second})) == "miss"
    assert _cache(_post(proxy, body, **{header: second})) == "hit"
    assert len(upstream.calls) == 2


def test_a_per_request_idempotency_key_does_not_split_the_tenant(proxy, upstream):
    body = _body("idempotency")
    assert _cache(_post(proxy, body, **{"idempotency-key": "one"})) == "miss"
    assert _cache(_post(proxy, body, **{"idempotency-key": "two"})) == "hit"


def test_the_query_string_is_in_the_key(proxy, upstream):
    body = _body("query")
    path = "/v1/chat/completions"
    assert _cache(_post(proxy, body, path + "?key=caller-a")) == "miss"
    assert _cache(_post(proxy, body, path + "?key=caller-b")) == "miss"
    assert _cache(_post(proxy, body, path + "?api-version=2024-06-01")) == "miss"
    assert _cache(_post(proxy, body, path)) == "miss"
    assert _cache(_post(proxy, body, path + "?key=caller-b")) == "hit"
    assert [q for _, q in upstream.calls] == [b"key=caller-a", b"key=caller-b", b"api-version=2024-06-01", b""]


# --------------------------------------------------------------------------- point 13: encodings


async def _concurrent(url: str, body: dict, encodings: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(encoding: str, pause: float) -> httpx.Response:
            await asyncio.sleep(pause)  # the first request leads
            request = client.build_request("POST", url + "/v1/chat/completions", json=body, headers={
                "authorization": "Bearer sk-a", "x-test-delay": "0.5", "accept-encoding": encoding})
            response = await client.send(request, stream=True)
            await response.aread()
            return response
        return await asyncio.gather(*[one(e, 0.1 * bool(i)) for i, e in enumerate(encodings)])


async def test_a_follower_never_gets_an_encoding_it_did_not_accept(proxy, upstream):
    responses = await _concurrent(proxy, _body("encodings"), ["gzip", "identity"])
    leader, follower = responses
    assert leader.headers.get("content-encoding") == "gzip"
    assert "content-encoding" not in follower.headers
    assert json.loads(follower.content) == json.loads(leader.content)  # httpx decoded the leader's gzip
    assert len(upstream.calls) == 2, "different encodings: two upstream calls"
    assert upstream.calls[1][0]["accept-encoding"] == "identity"


async def test_requests_accepting_the_same_encodings_still_coalesce(proxy, upstream):
    responses = await _concurrent(proxy, _body("same encodings"), ["gzip, deflate", "Deflate,GZIP;q=1.0"])
    assert len(upstream.calls) == 1
    assert responses[1].headers.get("x-ctxwarden-coalesced") == "1"
    assert responses[1].headers.get("content-encoding") == "gzip"
    assert responses[0].content == responses[1].content


# --------------------------------------------------------------------------- point 14: size


@pytest.mark.parametrize("kind", ["large", "large-chunked"])
def test_an_answer_above_the_limit_is_relayed_intact_and_not_stored(proxy, upstream, kind):
    body = _body(f"size {kind}")
    first = _post(proxy, body, **{"x-test-answer": kind})
    assert first.status_code == 200 and _cache(first) == "miss"
    assert hashlib.sha256(first.content).digest() == hashlib.sha256(upstream.large).digest()
    second = _post(proxy, body, **{"x-test-answer": kind})
    assert _cache(second) == "miss", "an answer above the limit must not be stored"
    assert second.content == upstream.large
    assert len(upstream.calls) == 2


def test_a_gzip_bomb_is_relayed_as_sent_and_not_stored(proxy, upstream):
    body = _body("bomb")
    for _ in range(2):
        with httpx.stream("POST", proxy + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": "Bearer sk-a", "x-test-answer": "bomb",
                                   "accept-encoding": "gzip"}) as response:
            raw = b"".join(response.iter_raw())
            assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
            assert _cache(response) == "miss", "a bomb is never stored"
        assert raw == upstream.bomb
    assert len(upstream.calls) == 2
    # the small answer after it is still cached as usual
    small = _body("after bomb")
    _post(proxy, small)
    assert _cache(_post(proxy, small)) == "hit"


async def test_followers_of_a_large_answer_get_it_whole(proxy, upstream):
    body = _body("large coalesced")
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(pause: float) -> httpx.Response:
            await asyncio.sleep(pause)
            return await client.post(proxy + "/v1/chat/completions", json=body, headers={
                "authorization": "Bearer sk-a", "x-test-delay": "0.5", "x-test-answer": "large-chunked"})
        responses = await asyncio.gather(one(0), one(0.1), one(0.1))
    assert len(upstream.calls) == 1
    assert all(r.status_code == 200 and r.content == upstream.large for r in responses)
    assert sum(r.headers.get("x-ctxwarden-coalesced") == "1" for r in responses) == 2
