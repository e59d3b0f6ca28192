"""The built-in model table through the HTTP proxy: the shipped default config,
pointed at the fake upstream, keeps a 130k-token gpt-4o request inside gpt-4o's
128k window less the output it asks for."""

from __future__ import annotations

import httpx

from ctxwarden.config import default_config_text
from ctxwarden.dialects import get_dialect, request_tokens
from tests.conftest import serve_proxy
from tests.unit.pipeline_helpers import openai_session


def _shipped_config(upstream_url: str) -> str:
    xml = default_config_text().decode()
    for origin in ("https://api.openai.com", "https://api.anthropic.com"):
        assert origin in xml
        xml = xml.replace(origin, upstream_url)
    return xml


def _tokens(body: dict) -> int:
    return request_tokens(body, get_dialect("openai"), "o200k_base")


def test_shipped_config_fits_a_130k_gpt4o_request_into_128k_less_its_output(fake_upstream_server, upstream):
    body = next(b for b in (openai_session(n, lines=60)[-1] for n in range(100, 400, 10)) if _tokens(b) >= 130_000)
    body["max_completion_tokens"] = 2000
    with serve_proxy(_shipped_config(fake_upstream_server.url)) as url:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    before, after = int(r.headers["x-ctxwarden-tokens-before"]), int(r.headers["x-ctxwarden-tokens-after"])
    assert before == _tokens(body) >= 130_000
    assert after <= 128_000 - 2000
    sent = upstream.recorder.last.json()
    assert _tokens(sent) == after
    assert sent["max_completion_tokens"] == 2000 and sent["messages"][-1] == body["messages"][-1]
