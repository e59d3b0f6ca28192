"""Generated bodies thrown at both chat routes and the parallel route of a real
proxy on loopback: every answer is a 2xx or a 4xx in the route's own error
shape, never a 5xx, never a hang (the client's timeout bounds each request)."""
from __future__ import annotations

import json
from collections import Counter

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROUTES = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic", "/_ctxwarden/parallel": "openai"}
REACHED: Counter = Counter()

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " " * 5000 + "x", "\udfff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "{{a}}", "```"])
scalars = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=20)
roles = st.sampled_from(["user", "assistant", "system", "tool", "developer", "function", "x", ""]) | values
messages = st.lists(st.fixed_dictionaries({"role": roles}, optional={"content": values, "tool_calls": values,
                                                                       "tool_call_id": values}), max_size=5)
chat_bodies = st.fixed_dictionaries({}, optional={"model": st.sampled_from(["m", ""]) | values,
                                                  "messages": messages | values, "max_tokens": values,
                                                  "stream": st.booleans() | values, "tools": values,
                                                  "temperature": values, "system": values})
# requests the proxy accepts, with odd content and unknown fields: they reach the upstream
valid_chat = st.fixed_dictionaries({"model": st.just("m"), "max_tokens": st.just(16), "messages": st.lists(
    st.fixed_dictionaries({"role": st.just("user"), "content": text.filter(str.strip)}), min_size=1, max_size=3)},
    optional={"x_unknown": values, "metadata": st.dictionaries(text, text, max_size=3), "temperature": st.just(0)})
valid_parallel = st.fixed_dictionaries({"tasks": st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c"]), "request": valid_chat}), min_size=1, max_size=3,
    unique_by=lambda t: t["id"])})
parallel_bodies = st.fixed_dictionaries({}, optional={"tasks": st.lists(st.fixed_dictionaries(
    {"id": text | values}, optional={"request": chat_bodies, "depends_on": values, "upstream_path": values}),
    max_size=4) | values})
raw_bodies = st.binary(max_size=200) | st.sampled_from(
    [b"[" * 3000 + b"]" * 3000, b'{"model": "m", "messages": [{"role": "user", "content": 1e400}]}', b"\xff\xfe"])


def _check(response: httpx.Response, dialect: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    REACHED[response.status_code // 100] += 1
    if response.status_code >= 400:
        error = response.json()
        if dialect == "anthropic":
            assert error["type"] == "error" and error["error"]["message"], error
        else:
            assert error["error"]["message"], error


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
# two in five bodies are valid for their route, so both outcomes are reached far
# above the floors below whatever the draw (about 48 and 72 of 120 expected)
@given(route=st.sampled_from(sorted(ROUTES)), kind=st.sampled_from(["valid", "valid", "odd", "odd", "raw"]),
       body=chat_bodies | parallel_bodies | values, raw=raw_bodies, data=st.data())
def test_generated_bodies_get_a_2xx_or_a_4xx_in_the_routes_shape(http, route, kind, body, raw, data):
    if kind == "valid":
        body = data.draw(valid_parallel if route == "/_ctxwarden/parallel" else valid_chat)
    content = raw if kind == "raw" else json.dumps(body).encode()
    headers = {"anthropic-version": "2023-06-01"} if ROUTES[route] == "anthropic" else {}
    _check(http.post(route, content=content, headers=headers, timeout=30), ROUTES[route])


def test_the_fuzz_reached_both_outcomes():
    # runs after the property above (file order): both kinds of answer were seen
    assert REACHED[2] >= 10 and REACHED[4] >= 30, REACHED
    assert sum(REACHED.values()) >= 100, REACHED
