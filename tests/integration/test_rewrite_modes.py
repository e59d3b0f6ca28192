"""The rewrite as a client sees it: enforce, shadow, off, rollout, reject, explain."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.unit.pipeline_helpers import count_request_tokens
from ctxwarden.app import create_app
from ctxwarden.config import parse_config
from tests.conftest import serve_proxy
from tests.servers import run_cli, serve_app
from tests.strict_wire import anthropic_messages_problems

BUDGET = 4000


def _config(upstream_url: str, *, mode: str = "enforce", rollout: int = 100, overflow: str = "passthrough") -> str:
    return f"""<performance_optimization>
  <token_management>
    <budget>{BUDGET}</budget>
    <critical_overflow>{overflow}</critical_overflow>
    <rewrite mode="{mode}" rollout="{rollout}"/>
  </token_management>
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""


def _long_conversation(opening: str = "You are a coding agent.") -> list[dict]:
    messages = [{"role": "system", "content": opening},
                {"role": "user", "content": "Fix the failing test in src/app/models.py"}]
    for i in range(12):
        call_id = f"call_{i}"
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "bash", "arguments": json.dumps({"cmd": f"cat src/module_{i}.py"})}}]})
        listing = "\n".join(f"def function_{i}_{n}(value):\n    return value * {n}  # line {n}" for n in range(80))
        messages.append({"role": "tool", "tool_call_id": call_id, "content": listing})
    messages.append({"role": "user", "content": "Now run the tests for function_11_3 and report."})
    return messages


def _body(**extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": _long_conversation(), "metadata": {"k": "v"},
            "x_unknown": [1, 2], "tools": [{"type": "function", "function": {"name": "bash", "parameters": {}}}],
            **extra}


@pytest.fixture(scope="module")
def enforce_url(fake_upstream_server):
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        yield url


def _post(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=15)


def test_enforce_sends_a_smaller_request_that_keeps_the_rest(enforce_url, upstream):
    body = _body()
    r = _post(enforce_url, body)
    assert r.status_code == 200
    before, after = int(r.headers["x-ctxwarden-tokens-before"]), int(r.headers["x-ctxwarden-tokens-after"])
    assert r.headers["x-ctxwarden-rewrite"] in ("compact", "append")
    assert float(r.headers["x-ctxwarden-cost-sent"]) < float(r.headers["x-ctxwarden-cost-passthrough"])
    assert before == count_request_tokens(body, "openai", "o200k_base")  # gpt-4o-mini's encoding
    assert after <= BUDGET < before
    sent = upstream.recorder.last.json()
    assert count_request_tokens(sent, "openai", "o200k_base") == after
    assert sent["messages"][0] == body["messages"][0]
    assert sent["messages"][-1] == body["messages"][-1]
    hints = {"messages", "prompt_cache_key"}
    assert {k: v for k, v in sent.items() if k not in hints} == {k: v for k, v in body.items() if k != "messages"}
    assert sent["prompt_cache_key"].startswith("ctxw-")


def test_small_request_passes_byte_for_byte(enforce_url, upstream):
    raw = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "z": 1},
                     indent=1).encode()
    r = httpx.post(enforce_url + "/v1/chat/completions", content=raw, timeout=15)
    assert r.status_code == 200 and r.headers["x-ctxwarden-rewrite"] == "unchanged"
    assert r.headers["x-ctxwarden-tokens-before"] == r.headers["x-ctxwarden-tokens-after"]
    assert upstream.recorder.last.body == raw


@pytest.mark.parametrize("mode", ["shadow", "off"])
def test_shadow_and_off_send_the_original(fake_upstream_server, upstream, mode):
    raw = json.dumps(_body()).encode()
    with serve_proxy(_config(fake_upstream_server.url, mode=mode)) as url:
        r = httpx.post(url + "/v1/chat/completions", content=raw, timeout=15)
    assert r.status_code == 200
    assert upstream.recorder.last.body == raw
    assert r.headers["x-ctxwarden-rewrite"] == mode
    assert r.headers["x-ctxwarden-tokens-before"] == r.headers["x-ctxwarden-tokens-after"]
    if mode == "shadow":
        assert int(r.headers["x-ctxwarden-shadow-tokens-after"]) <= BUDGET
    else:
        assert "x-ctxwarden-shadow-tokens-after" not in r.headers


def test_rollout_picks_whole_conversations(fake_upstream_server, upstream):
    openings = [f"You are agent number {i}." for i in range(40)]
    with serve_proxy(_config(fake_upstream_server.url, rollout=50)) as url:
        decisions = {}
        for opening in openings:
            body = {"model": "gpt-4o-mini", "messages": _long_conversation(opening)}
            first = _post(url, body).headers["x-ctxwarden-rewrite"] == "excluded"
            body["messages"] += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
            later = _post(url, body).headers["x-ctxwarden-rewrite"] == "excluded"
            assert first == later, "a conversation is always or never rewritten"
            decisions[opening] = first
    assert set(decisions.values()) == {True, False}
    with serve_proxy(_config(fake_upstream_server.url, rollout=0)) as url:
        assert _post(url, _body()).headers["x-ctxwarden-rewrite"] == "excluded"


def test_critical_overflow_reject_is_a_400_and_nothing_is_sent(fake_upstream_server, upstream):
    messages = [{"role": "system", "content": "rules " * 6000}, {"role": "user", "content": "hello"}]
    with serve_proxy(_config(fake_upstream_server.url, overflow="reject")) as url:
        r = _post(url, {"model": "gpt-4o-mini", "messages": messages})
        ra = httpx.post(url + "/v1/messages", json={"model": "claude-x", "max_tokens": 10, "system": "rules " * 6000,
                                                    "messages": [{"role": "user", "content": "hello"}]},
                        headers={"anthropic-version": "2023-06-01"}, timeout=15)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "token" in r.json()["error"]["message"]
    assert ra.status_code == 400 and ra.json()["type"] == "error"
    assert len(upstream.recorder) == 0


def test_critical_overflow_passthrough_sends_unchanged(enforce_url, upstream):
    messages = [{"role": "system", "content": "rules " * 6000}, {"role": "user", "content": "hello"}]
    r = _post(enforce_url, {"model": "gpt-4o-mini", "messages": messages})
    assert r.status_code == 200
    assert r.headers["x-ctxwarden-rewrite"] == "passthrough" and "budget" in r.headers["x-ctxwarden-warning"]
    assert upstream.recorder.last.json()["messages"] == messages


def test_a_pending_tool_output_over_the_budget_is_cut_to_fit(fake_upstream_server, upstream):
    messages = _long_conversation()[:-1]
    messages[-1] = {**messages[-1], "content": "\n".join(f"line {n}: value_{n} = {n * 7}" for n in range(3000))}
    with serve_proxy(_config(fake_upstream_server.url, overflow="fit")) as url:
        r = _post(url, {"model": "gpt-4o-mini", "messages": messages})
    assert r.status_code == 200 and int(r.headers["x-ctxwarden-tokens-after"]) <= BUDGET
    cut = upstream.recorder.last.json()["messages"][-1]["content"]
    assert "lines omitted]" in cut and cut.startswith("line 0: ") and cut.endswith("line 2999: value_2999 = 20993")


def test_anthropic_sdk_conversation_is_rewritten(enforce_url, upstream):
    messages = [{"role": "user", "content": "Fix the bug in src/app/models.py"}]
    for i in range(10):
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Reading file {i}."},
            {"type": "tool_use", "id": f"toolu_{i}", "name": "bash", "input": {"cmd": f"cat src/m{i}.py"}}]})
        listing = "\n".join(f"def helper_{i}_{n}(x):\n    return x + {n}" for n in range(80))
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": listing}]})
    messages.append({"role": "assistant", "content": "Done reading."})
    messages.append({"role": "user", "content": "Summarise helper_9_2."})
    client = anthropic.Anthropic(base_url=enforce_url, api_key="sk-ant-test", max_retries=0)
    raw = client.messages.with_raw_response.create(model="claude-test-model", max_tokens=64,
                                                  system="You are careful.", messages=messages)
    assert raw.headers["x-ctxwarden-rewrite"] in ("compact", "append")
    assert int(raw.headers["x-ctxwarden-tokens-after"]) <= BUDGET
    assert raw.parse().content[0].type == "text"
    sent = upstream.recorder.last.json()
    assert sent["system"] == "You are careful."
    assert sent["messages"][-1] == messages[-1], "a string content is never rewritten into blocks"
    marked = [m for m in sent["messages"] if "cache_control" in json.dumps(m)]
    assert marked and marked[-1] is not sent["messages"][-1], "the end breakpoint sits on the last block list"
    assert anthropic_messages_problems(sent) == [], "valid for a strict upstream"


def test_explain_endpoint_reports_every_message_without_calling_upstream(enforce_url, upstream):
    body = _body()
    r = httpx.post(enforce_url + "/_ctxwarden/explain", json=body, timeout=15)
    assert r.status_code == 200
    report = r.json()
    assert report["changed"] is True and report["tokens_after"] <= BUDGET < report["tokens_before"]
    assert [m["index"] for m in report["messages"]] == list(range(len(body["messages"])))
    assert {m["action"] for m in report["messages"]} == {"kept", "compacted"}
    assert all(m["reason"] for m in report["messages"]) and report["reason"] and report["note"]
    assert report["cost_sent"] < report["cost_passthrough"]
    assert report["request"]["messages"][-1] == body["messages"][-1]
    assert len(upstream.recorder) == 0
    bad = httpx.post(enforce_url + "/_ctxwarden/explain?dialect=anthropic", content=b"[1]", timeout=15)
    assert bad.status_code == 400


def test_explain_endpoint_tells_the_dialect_from_the_body(enforce_url, upstream):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "go on"}]
    anthropic_body = {"model": "claude-x", "max_tokens": 64, "system": "be brief", "messages": turns}
    as_anthropic = httpx.post(enforce_url + "/_ctxwarden/explain", json=anthropic_body, timeout=15)
    # read as Anthropic's: the system prompt is a field of its own, not one of the messages
    assert as_anthropic.status_code == 200, as_anthropic.text
    assert len(as_anthropic.json()["messages"]) == 3 and as_anthropic.json()["request"]["system"] == "be brief"
    responses_body = {"model": "gpt-4o", "instructions": "be brief", "input": turns}
    as_responses = httpx.post(enforce_url + "/_ctxwarden/explain", json=responses_body, timeout=15)
    assert as_responses.status_code == 200, as_responses.text
    assert as_responses.json()["request"]["input"] == turns
    both = {**anthropic_body, "messages": [{"role": "system", "content": "be brief"}, *turns]}
    refused = httpx.post(enforce_url + "/_ctxwarden/explain", json=both, timeout=15)
    assert refused.status_code == 400 and "more than one dialect" in refused.text
    assert len(upstream.recorder) == 0


def test_explain_cli(tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(_body()))
    config = tmp_path / "config.xml"
    config.write_text(_config("http://127.0.0.1:9"))
    done = run_cli(["explain", str(request), "--config", str(config), "--json"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tokens_after"] <= BUDGET < report["tokens_before"]


def _agent_turns(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": "Fix the failing test in src/app/models.py"}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": "bash", "arguments": json.dumps({"cmd": f"cat src/module_{i}.py"})}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}",
                         "content": "\n".join(f"def f_{i}_{n}(v):\n    return v * {n}" for n in range(40))})
    return messages


def test_conversation_prefix_is_stable_across_turns_and_its_state_stored(fake_upstream_server, upstream):
    xml = _config(fake_upstream_server.url).replace(f"<budget>{BUDGET}</budget>", "<budget>12000</budget>")
    sent = []
    app = create_app(parse_config(xml))
    with serve_app(app) as url:
        for turns in (20, 21, 22):
            body = {"model": "gpt-4o-mini", "messages": _agent_turns(turns)}
            r = _post(url, body)
            assert r.headers["x-ctxwarden-rewrite"] in ("compact", "append")
            sent.append(upstream.recorder.last.json()["messages"])
        store = app.state.proxy.cache.backend
        assert len(store) == 3, "one state per turn, each under the key of the history it covers"
        assert store.hits == 2, "the later turns continued from the stored state"
    for previous, current in zip(sent, sent[1:]):
        assert current[:len(previous)] == previous, "each turn's request starts with the previous one"


def test_anthropic_stable_prefix_gets_a_cache_breakpoint(fake_upstream_server, upstream):
    anthropic = f'<upstream name="anthropic" dialect="anthropic" base_url="{fake_upstream_server.url}"'
    xml = _config(fake_upstream_server.url).replace(anthropic + "/>", anthropic + '><pricing markers="true"/></upstream>')
    assert '<pricing markers="true"/>' in xml
    messages = [{"role": "user", "content": "Fix the bug in src/app/models.py"}]
    for i in range(14):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_{i}", "name": "bash", "input": {"cmd": f"cat src/m{i}.py"}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                         "content": "\n".join(f"def h_{i}_{n}(x):\n    return x + {n}" for n in range(40))}]})
    messages.append({"role": "assistant", "content": "Read them all."})
    messages.append({"role": "user", "content": "Which helper adds 7?"})
    with serve_proxy(xml) as url:
        r = httpx.post(url + "/v1/messages", timeout=15, headers={"anthropic-version": "2023-06-01"},
                       json={"model": "claude-x", "max_tokens": 10, "messages": messages})
    assert r.headers["x-ctxwarden-rewrite"] in ("compact", "append")
    sent = upstream.recorder.last.json()["messages"]
    marked = [i for i, m in enumerate(sent) if isinstance(m["content"], list)
              and any("cache_control" in b for b in m["content"])]
    listed = [i for i, m in enumerate(sent) if isinstance(m["content"], list)]
    assert marked == [1, listed[-1]], "the stable prefix's end (the note after the task) and the request's"
    assert sent[1]["content"][0]["text"].startswith("[ctxwarden: compacted]")
    assert sent[-1] == messages[-1]
