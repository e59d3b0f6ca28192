"""Conversation state over real HTTP: what replicas send, where the state lives,
whose it is, and what the response headers, metrics and stats say it saved.

A long agent conversation (tool calls, a user turn in the middle, a question
about a fact from early on) is sent turn by turn through the official SDKs,
each turn the whole history so far, against proxies with a small budget so
that it is compacted several times:

* two replicas with in-process caches (nothing shared) taking alternate turns
  send upstream exactly what one proxy alone sends, and so does a fresh one
  that sees only the last turn (OpenAI; Anthropic; Anthropic with the
  client's own breakpoints moved every turn; OpenAI with the user adding a
  message after a tool output, before the assistant answers);
* between compactions every turn's messages start with the previous turn's;
* two replicas on one real redis-server find each other's state there, and
  three `ctxwarden serve` processes on it taking turns keep a byte-stable prefix;
* the state is per tenant (credential); a retried turn sends the same bytes;
* cost headers, Prometheus counters and live stats agree and show a saving.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ctxwarden.cache import conversation_store_key, credential_fingerprint
from ctxwarden.pipeline import ConversationState, conversation_keys
from ctxwarden.dialects.anthropic.markers import count_breakpoints
from tests.servers import cli_server

from ._helpers import served, small_budget_config

BUDGET = 4000
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-test-model"
MAX_TOKENS = 256
SYSTEM = "You are a careful coding agent. Use the bash tool to read files before changing them."
TASK = "Fix the failing test tests/test_handlers.py::test_retry in src/app/handlers.py"
REDIS_URL_ENV = "CTXWARDEN_TEST_CONVERSATION_REDIS_URL"
DEFAULT_KEY = "sk-conversation"
# what identifies a tenant (the Anthropic SDK sends either x-api-key or authorization)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "openai-organization", "openai-project")
TURNS = 24
PLANTED_AT = 2          # the tool output that holds the planted fact
USER_TURNS = {8: "Good. Now look at how the views call these handlers.",
              18: "What value did RETRY_LIMIT have in src/config/settings.py?"}
REWRITTEN = ("append", "compact")

OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]
ANTHROPIC_TOOLS = [{"name": "bash", "description": "Run a shell command",
                    "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}},
                                     "required": ["cmd"]}}]


def _config(upstream_url: str, cache: str = "") -> str:
    return small_budget_config(upstream_url, BUDGET, cache)


# ------------------------------------------------------------------ the conversation

def _tool_output(i: int) -> str:
    lines = [f"# src/app/module_{i}.py"]
    for n in range(36):
        lines.append(f"def handler_{i}_{n}(request, retries={n % 5}):  # answers status {200 + n} for route /r{i}/{n}")
    if i == PLANTED_AT:
        lines.insert(12, "RETRY_LIMIT = 17  # read from src/config/settings.py by handler_2_11")
    return "\n".join(lines)


def _command(i: int) -> str:
    return f"cat src/app/module_{i}.py"


def _interjection(i: int) -> str:
    log = "\n".join(f"tests/test_handlers.py:{40 + n}: AssertionError in handler_{i}_{n}: expected 200, got 503"
                     for n in range(16))
    return f"Also, keep the public API of src/app/module_{i}.py unchanged. The CI log says:\n{log}"


def openai_history(interjections: tuple[int, ...] = ()) -> list[list[dict]]:
    """The request of every turn: the whole history so far, OpenAI dialect.
    After the tool output of a turn in ``interjections`` the user adds a message
    of their own before the assistant answers (a request of its own, too)."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    requests = [list(messages)]
    for i in range(TURNS):
        if i in USER_TURNS:
            messages.append({"role": "assistant", "content": f"I have read modules 0 to {i - 1}."})
            messages.append({"role": "user", "content": USER_TURNS[i]})
        else:
            messages.append({"role": "assistant", "content": f"Reading module {i}.", "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": "bash", "arguments": json.dumps({"cmd": _command(i)})}}]})
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": _tool_output(i)})
        requests.append(list(messages))
        if i in interjections:
            messages.append({"role": "user", "content": _interjection(i)})
            requests.append(list(messages))
    return requests


def anthropic_history() -> list[list[dict]]:
    """The same conversation in the Anthropic dialect (system prompt outside messages)."""
    messages: list[dict] = [{"role": "user", "content": TASK}]
    requests = [list(messages)]
    for i in range(TURNS):
        if i in USER_TURNS:
            messages.append({"role": "assistant", "content": f"I have read modules 0 to {i - 1}."})
            messages.append({"role": "user", "content": USER_TURNS[i]})
        else:
            messages.append({"role": "assistant", "content": [
                {"type": "text", "text": f"Reading module {i}."},
                {"type": "tool_use", "id": f"toolu_{i}", "name": "bash", "input": {"cmd": _command(i)}}]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": _tool_output(i)}]})
        requests.append(list(messages))
    return requests


def anthropic_history_with_client_breakpoints() -> list[list[dict]]:
    """The Anthropic conversation as Claude Code sends it: every content a block
    list, and the client's own cache_control breakpoint moved to the end of the
    latest message each turn (the conversation must still be recognised)."""
    requests = []
    for messages in anthropic_history():
        messages = copy.deepcopy(messages)
        for message in messages:
            if isinstance(message["content"], str):
                message["content"] = [{"type": "text", "text": message["content"]}]
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        requests.append(messages)
    return requests


HISTORIES = {"openai": openai_history, "anthropic": anthropic_history,
             "anthropic-client-breakpoints": anthropic_history_with_client_breakpoints,
             "openai-user-interjects": lambda: openai_history(interjections=(3, 5, 9, 12, 15, 20))}


def dialect_of(variant: str) -> str:
    return variant.split("-", 1)[0]


def client_body(dialect: str, messages: list[dict]) -> dict:
    """The body the SDK sends for a turn (what the proxy receives)."""
    if dialect == "openai":
        return {"model": OPENAI_MODEL, "messages": messages, "tools": OPENAI_TOOLS}
    return {"model": ANTHROPIC_MODEL, "max_tokens": MAX_TOKENS, "system": SYSTEM, "tools": ANTHROPIC_TOOLS,
            "messages": messages}


# ------------------------------------------------------------------ sending a turn

@dataclass(frozen=True)
class Turn:
    decision: str
    reason: str
    tokens_before: int
    tokens_after: int
    cost_sent: float | None
    cost_passthrough: float | None
    sent: dict                           # the body as the upstream received it
    credentials: tuple                   # the credential headers the SDK sent (forwarded unchanged)

    @property
    def messages(self) -> list:
        return self.sent["messages"]


def _number(headers, name: str) -> float | None:
    value = headers.get(name)
    return None if value is None else float(value)


class Sender:
    """Sends turns through the official SDKs, one client per (dialect, proxy, key)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, str], Any] = {}

    def client(self, dialect: str, url: str, key: str):
        found = self._clients.get((dialect, url, key))
        if found is None:
            if dialect == "openai":
                found = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=15)
            else:
                found = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=15)
            self._clients[(dialect, url, key)] = found
        return found

    def send(self, dialect: str, url: str, messages: list[dict], recorder, key: str = DEFAULT_KEY) -> Turn:
        before = len(recorder)
        client = self.client(dialect, url, key)
        if dialect == "openai":
            raw = client.chat.completions.with_raw_response.create(
                model=OPENAI_MODEL, messages=messages, tools=OPENAI_TOOLS)
            assert raw.parse().choices, "the SDK parses the answer"
        else:
            raw = client.messages.with_raw_response.create(
                model=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS, system=SYSTEM, tools=ANTHROPIC_TOOLS,
                messages=messages)
            assert raw.parse().content, "the SDK parses the answer"
        assert raw.status_code == 200
        assert len(recorder) == before + 1, "exactly one upstream call per turn"
        headers = raw.headers
        return Turn(decision=headers["x-ctxwarden-rewrite"], reason=headers.get("x-ctxwarden-reason", ""),
                    tokens_before=int(headers["x-ctxwarden-tokens-before"]),
                    tokens_after=int(headers["x-ctxwarden-tokens-after"]),
                    cost_sent=_number(headers, "x-ctxwarden-cost-sent"),
                    cost_passthrough=_number(headers, "x-ctxwarden-cost-passthrough"),
                    sent=recorder.last.json(),
                    credentials=tuple((k.encode("latin-1"), v.encode("latin-1"))
                                      for k, v in recorder.last.raw_headers if k in CREDENTIAL_HEADERS))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture(scope="module")
def sender() -> Iterator[Sender]:
    s = Sender()
    yield s
    s.close()


@dataclass(frozen=True)
class Reference:
    turns: list[Turn]      # what one proxy alone sent upstream, turn by turn
    state_hits: list[int]  # how many stored states it found for each turn (0 or 1)


@pytest.fixture(scope="module")
def single_proxy_turns(fake_upstream_server, sender):
    """What one proxy alone sends upstream for every turn of a conversation."""
    done: dict[str, Reference] = {}

    def run(variant: str) -> Reference:
        if variant not in done:
            turns, hits = [], []
            with served(_config(fake_upstream_server.url)) as (url, app):
                backend = app.state.proxy.cache.backend
                for messages in HISTORIES[variant]():
                    before = backend.hits
                    turns.append(sender.send(dialect_of(variant), url, messages, fake_upstream_server.recorder))
                    hits.append(backend.hits - before)
            done[variant] = Reference(turns, hits)
        return done[variant]

    return run


# ------------------------------------------------------------------ checks

def _without_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_markers(v) for v in value]
    return value


def _assert_append_only(turns: list[Turn]) -> int:
    """Every `append` turn's messages start with the previous turn's (cache
    marks aside); returns how many turns were checked."""
    checked = 0
    for i in range(1, len(turns)):
        if turns[i].decision != "append":
            continue
        previous, current = _without_markers(turns[i - 1].messages), _without_markers(turns[i].messages)
        assert len(current) >= len(previous), f"turn {i} sent fewer messages than turn {i - 1} without compacting"
        for j, (was, now) in enumerate(zip(previous, current)):
            assert was == now, f"turn {i} ({turns[i].decision}) changed message {j} sent by turn {i - 1}"
        checked += 1
    return checked


def _assert_shape(turns: list[Turn], history: list[list[dict]], dialect: str) -> None:
    """The conversation went the way the test means it to: small first, then
    appended and compacted more than once, never over the budget, the system
    prompt and what the user wrote last untouched, the client's own cache
    breakpoints kept (never more than 4)."""
    decisions = [t.decision for t in turns]
    assert decisions[0] == "unchanged", decisions
    assert decisions.count("compact") >= 2, f"expected several compactions: {decisions}"
    assert decisions.count("append") >= 5, f"expected appended turns between compactions: {decisions}"
    assert set(decisions) <= {"unchanged", "append", "compact"}, decisions
    for i, (turn, messages) in enumerate(zip(turns, history)):
        if turn.decision in REWRITTEN:
            assert turn.tokens_after <= BUDGET, f"turn {i}: {turn.tokens_after} tokens sent"
        else:
            assert turn.messages == messages, f"turn {i} ({turn.decision}) changed the messages"
        if dialect == "openai":
            assert turn.messages[0] == messages[0], f"turn {i}: the system prompt changed"
            continue
        assert turn.sent["system"] == SYSTEM
        assert count_breakpoints(turn.sent) <= 4, f"turn {i}: more than 4 cache breakpoints"
        latest, sent = messages[-1], turn.messages[-1]
        assert sent["role"] == "user"
        if sent == latest:
            continue
        # turns alternate, so ctxwarden's own text (a recall) joins the latest user turn
        # as a block of its own; the client's blocks stay as written, its breakpoint too
        assert turn.decision in REWRITTEN, f"turn {i}: the latest message changed"
        blocks = ([{"type": "text", "text": latest["content"]}] if isinstance(latest["content"], str)
                  else latest["content"])
        # ctxwarden may add its end breakpoint; the client's own stay where they are
        assert all(b in sent["content"] for b in blocks if "cache_control" in b), f"turn {i}: a client breakpoint moved"
        content, blocks = _without_markers(sent["content"]), _without_markers(blocks)
        ours = [b for b in content if b not in blocks]
        assert [b for b in content if b in blocks] == blocks, f"turn {i}: the latest message's blocks changed"
        assert all(b["type"] == "text" and b["text"].startswith("[ctxwarden: ") for b in ours), \
            f"turn {i}: only ctxwarden's own text joins the user's turn"


def _assert_same_bodies(got: list[Turn], expected: list[Turn], what: str) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert (a.decision, a.tokens_after) == (b.decision, b.tokens_after), f"{what}, turn {i}"
        assert a.sent == b.sent, f"{what}: turn {i} ({a.decision}) sent other bytes than one proxy alone"
        assert (a.cost_sent, a.cost_passthrough) == (b.cost_sent, b.cost_passthrough), f"{what}, turn {i}"


# ------------------------------------------------------------------ 1. replicas without shared state

@pytest.mark.parametrize("variant", ["openai", "anthropic", "anthropic-client-breakpoints", "openai-user-interjects"])
def test_alternating_replicas_send_what_one_proxy_sends(variant, fake_upstream_server, upstream, sender,
                                                        single_proxy_turns):
    dialect = dialect_of(variant)
    history = HISTORIES[variant]()
    reference = single_proxy_turns(variant)
    alone = reference.turns
    xml = _config(fake_upstream_server.url)
    with served(xml) as (first, first_app), served(xml) as (second, second_app):
        alternating = [sender.send(dialect, (first, second)[i % 2], messages, upstream.recorder)
                       for i, messages in enumerate(history)]
        assert first_app.state.proxy.cache.backend is not second_app.state.proxy.cache.backend
    with served(xml) as (fresh, _):
        last = sender.send(dialect, fresh, history[-1], upstream.recorder)

    _assert_shape(alone, history, dialect)
    # one proxy alone continued from the state it stored the turn before, every time
    assert reference.state_hits == [int(i > 0 and alone[i - 1].decision in REWRITTEN) for i in range(len(alone))]
    _assert_same_bodies(alternating, alone, "alternating replicas")
    assert last.sent == alone[-1].sent, "a replica that never saw the conversation sends the same bytes"
    assert _assert_append_only(alone) >= 5
    assert _assert_append_only(alternating) >= 5
    # the planted fact, compacted away by then, is recalled verbatim when the user asks for it
    asked = next(i for i, messages in enumerate(history) if "RETRY_LIMIT" in str(messages[-1]["content"]))
    assert alone[asked].decision in REWRITTEN
    assert "RETRY_LIMIT = 17" in json.dumps(alone[asked].messages)
    assert "RETRY_LIMIT = 17" not in json.dumps(alone[asked - 1].messages), "the fact was compacted away before"
    if dialect == "openai":
        keys = {t.sent.get("prompt_cache_key") for t in alone if t.decision in REWRITTEN}
        assert len(keys) == 1 and next(iter(keys)).startswith("ctxw-"), "one prompt cache key per conversation"


# ------------------------------------------------------------------ 2. replicas sharing one Redis

def _redis_keys(client, pattern: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=pattern, count=1000)}


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_replicas_on_one_redis_continue_each_others_state(dialect, fake_upstream_server, upstream, sender,
                                                          single_proxy_turns, redis_url, monkeypatch):
    redis = pytest.importorskip("redis")
    prefix = f"convtest{time.monotonic_ns()}:"
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    xml = _config(fake_upstream_server.url,
                  f'<cache backend="redis" redis_url_env="{REDIS_URL_ENV}" key_prefix="{prefix}"/>')
    history = HISTORIES[dialect]()
    store = redis.Redis.from_url(redis_url)
    turns: list[Turn] = []
    try:
        with served(xml) as (first, first_app), served(xml) as (second, second_app):
            replicas = [(first, first_app.state.proxy.cache.backend), (second, second_app.state.proxy.cache.backend)]
            assert all(backend.name == "redis" for _, backend in replicas)
            for i, messages in enumerate(history):
                url, backend = replicas[i % 2]
                keys_before = _redis_keys(store, prefix + "*")
                hits_before = backend.hits
                turn = sender.send(dialect, url, messages, upstream.recorder)
                turns.append(turn)
                keys_after = _redis_keys(store, prefix + "*")
                new = keys_after - keys_before
                assert keys_before <= keys_after
                assert all(k.startswith(prefix + "conv:") for k in keys_after), \
                    "nothing but conversation state is stored (answers are not cacheable here)"
                if turn.decision not in REWRITTEN:
                    assert not new, f"turn {i} ({turn.decision}) stored a state"
                    continue
                # the state of this turn, under the key of the whole history it covers, for this tenant
                tenant = credential_fingerprint(turn.credentials)
                key = prefix + conversation_store_key(conversation_keys(client_body(dialect, messages),
                                                                        dialect)[-1], tenant)
                assert new == {key}, f"turn {i}: expected one new state key"
                state = ConversationState.from_bytes(store.get(key))
                assert state.covered == len(messages)
                assert 0 < store.pttl(key), "the state has a TTL"
                if i and turns[i - 1].decision in REWRITTEN:
                    # the previous turn went to the other replica: this one read its state from Redis
                    assert backend.hits == hits_before + 1, f"turn {i}: the other replica's state was not found"
                else:
                    assert backend.hits == hits_before, f"turn {i}: there was no state to find"
        assert sum(b.hits for _, b in replicas) >= 10
    finally:
        stale = list(store.scan_iter(match=prefix + "*", count=1000))
        if stale:
            store.delete(*stale)
        store.close()

    alone = single_proxy_turns(dialect).turns
    _assert_same_bodies(turns, alone, "replicas on Redis")
    assert _assert_append_only(turns) >= 5


def test_serve_replicas_on_one_redis_keep_a_byte_stable_prefix(fake_upstream_server, upstream, sender,
                                                                single_proxy_turns, redis_url, tmp_path):
    """Three `ctxwarden serve` processes on one Redis, the turns going round
    them: every appended turn starts with the previous turn's bytes, and every
    turn sends what one proxy alone sends."""
    redis = pytest.importorskip("redis")
    prefix = f"convserve{time.monotonic_ns()}:"
    path = tmp_path / "replicas.xml"
    path.write_text(_config(fake_upstream_server.url,
                            f'<cache backend="redis" redis_url="{redis_url}" key_prefix="{prefix}"/>'))
    store = redis.Redis.from_url(redis_url)
    try:
        with cli_server(path) as (first, _), cli_server(path) as (second, _), cli_server(path) as (third, _):
            urls = (first, second, third)
            turns = [sender.send("openai", urls[i % 3], messages, upstream.recorder)
                     for i, messages in enumerate(HISTORIES["openai"]())]
        states = _redis_keys(store, prefix + "conv:*")
        assert len(states) >= 5, "the replicas kept the conversation's state in Redis"
    finally:
        stale = list(store.scan_iter(match=prefix + "*", count=1000))
        if stale:
            store.delete(*stale)
        store.close()
    assert _assert_append_only(turns) >= 5
    _assert_same_bodies(turns, single_proxy_turns("openai").turns, "serve replicas on Redis")


# ------------------------------------------------------------------ 3. tenancy

def _conversation_keys_in(backend) -> set[str]:
    return {k for k in list(backend._cache.keys()) if k.startswith("conv:")}


def test_conversation_state_is_per_tenant(fake_upstream_server, upstream, sender):
    # three consecutive turns after the first compaction (turns 5 to 7: append, append, compact)
    k1, k2, k3 = openai_history()[5:8]
    with served(_config(fake_upstream_server.url)) as (url, app):
        backend = app.state.proxy.cache.backend
        assert backend.name == "memory"
        a1 = sender.send("openai", url, k1, upstream.recorder, key="a")
        assert a1.decision in REWRITTEN
        assert len(_conversation_keys_in(backend)) == 1 and backend.hits == 0
        b2 = sender.send("openai", url, k2, upstream.recorder, key="b")
        assert backend.hits == 0, "tenant b continued tenant a's state"
        assert len(_conversation_keys_in(backend)) == 2
        a2 = sender.send("openai", url, k2, upstream.recorder, key="a")
        assert backend.hits == 1, "tenant a did not find its own state"
        assert len(_conversation_keys_in(backend)) == 3
        b3 = sender.send("openai", url, k3, upstream.recorder, key="b")
        assert backend.hits == 2, "tenant b did not find its own state"
        assert len(_conversation_keys_in(backend)) == 4
        a3 = sender.send("openai", url, k3, upstream.recorder, key="a")
        assert backend.hits == 3
        keys = _conversation_keys_in(backend)
    assert all(t.decision in REWRITTEN for t in (a1, b2, a2, b3, a3))
    # one state per tenant and turn: a at k1, k2, k3; b at k2, k3
    assert len(keys) == 5, keys
    assert a1.credentials == ((b"authorization", b"Bearer a"),) and b2.credentials == ((b"authorization", b"Bearer b"),)
    tenant_a, tenant_b = credential_fingerprint(a1.credentials), credential_fingerprint(b2.credentials)
    for messages in (k2, k3):
        chained = conversation_keys(client_body("openai", messages), "openai")[-1]
        assert {conversation_store_key(chained, tenant_a), conversation_store_key(chained, tenant_b)} <= keys
    for tenant_turn, other in ((a2, b2), (a3, b3)):
        assert tenant_turn.sent == other.sent, "the state changes no bytes, only who may use it"


def test_a_retried_turn_sends_the_same_bytes(fake_upstream_server, upstream, sender):
    """A client retrying a turn the upstream failed (the state was stored before
    the call) gets the very same request sent again, not a second rewrite."""
    history = openai_history()
    with served(_config(fake_upstream_server.url)) as (url, app):
        backend = app.state.proxy.cache.backend
        for messages in history[3:7]:
            sender.send("openai", url, messages, upstream.recorder)
        compaction = history[7]
        client = sender.client("openai", url, DEFAULT_KEY)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=OPENAI_MODEL, messages=compaction, tools=OPENAI_TOOLS,
                                           extra_headers={"x-fake-status": "503"})
        failed = upstream.recorder.last.json()
        keys, hits = _conversation_keys_in(backend), backend.hits
        retried = sender.send("openai", url, compaction, upstream.recorder)
        assert retried.sent == failed
        assert retried.decision == "compact", "the retry is accounted as the compaction it repeats"
        assert backend.hits == hits + 1 and _conversation_keys_in(backend) == keys, "the stored state was reused"
    assert retried.tokens_after <= BUDGET < retried.tokens_before
    assert "[ctxwarden: compacted]" in json.dumps(failed["messages"]), "the failed turn was a compaction"


# ------------------------------------------------------------------ 4. what it says it saved

def _metric_total(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith((name + "{", name + " "))]
    assert values, f"{name} is not in /metrics"
    return sum(values)


def test_cost_headers_metrics_and_stats(fake_upstream_server, upstream, sender):
    history = openai_history()
    with served(_config(fake_upstream_server.url)) as (url, _):
        turns = [sender.send("openai", url, messages, upstream.recorder) for messages in history]
        with httpx.Client(base_url=url, timeout=15) as admin:
            # the request's record is finished just after its response is sent
            deadline = time.monotonic() + 5
            stats = admin.get("/_ctxwarden/stats").json()
            while stats["requests"] < len(history) and time.monotonic() < deadline:
                time.sleep(0.01)
                stats = admin.get("/_ctxwarden/stats").json()
            assert stats["requests"] == len(history)
            metrics = admin.get("/metrics").text

    compacted = False
    sent_so_far = passthrough_so_far = 0.0
    for i, turn in enumerate(turns):
        if turn.decision not in REWRITTEN:
            assert turn.cost_sent is None and turn.cost_passthrough is None, f"turn {i} ({turn.decision}) priced"
            continue
        assert turn.reason, f"turn {i}: no x-ctxwarden-reason"
        assert turn.cost_sent is not None and turn.cost_passthrough is not None, f"turn {i}: no cost headers"
        assert turn.cost_sent >= 0 and turn.cost_passthrough > 0
        compacted = compacted or turn.decision == "compact"
        if turn.decision == "append":
            # the same bytes as passthrough until the first compaction, fewer read back after it
            assert turn.cost_sent < turn.cost_passthrough if compacted else turn.cost_sent == turn.cost_passthrough, (
                f"turn {i}: append costs {turn.cost_sent}, passthrough {turn.cost_passthrough}")
        sent_so_far += turn.cost_sent
        passthrough_so_far += turn.cost_passthrough
        # a compaction is paid for by what was saved before it (plus 1% slack): never dearer overall
        assert sent_so_far <= 1.01 * passthrough_so_far + 1, f"turn {i}: {sent_so_far} > {passthrough_so_far}"
    assert compacted
    priced = [t for t in turns if t.cost_sent is not None]
    header_sent = sum(t.cost_sent for t in priced)
    header_passthrough = sum(t.cost_passthrough for t in priced)
    assert header_sent < header_passthrough

    sent_total = _metric_total(metrics, "ctxwarden_input_cost_sent_total")
    passthrough_total = _metric_total(metrics, "ctxwarden_input_cost_passthrough_total")
    assert 0 < sent_total < passthrough_total
    # the headers are rounded to whole units
    assert abs(sent_total - header_sent) <= 0.5 * len(priced) + 0.01
    assert abs(passthrough_total - header_passthrough) <= 0.5 * len(priced) + 0.01

    assert 0 < stats["bill_saved_ratio"] < 1, stats["bill_saved_ratio"]
    assert stats["bill_saved_ratio"] == pytest.approx(1 - sent_total / passthrough_total, abs=1e-3)
    assert stats["cost_sent"] == pytest.approx(sent_total, abs=0.1)
    assert stats["cost_passthrough"] == pytest.approx(passthrough_total, abs=0.1)
