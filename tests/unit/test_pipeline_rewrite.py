"""The per-conversation, append-only, priced rewrite (ctxwarden.pipeline.conversation)."""
from __future__ import annotations

import json
import re

import pytest

from ctxwarden.pipeline import (ConversationState, RewritePlan, conversation_keys, explain_turn,
                            rewrite_turn)
from ctxwarden.pipeline.invariants import check_turn
from ctxwarden.pipeline.text import MARKER_PREFIX
from ctxwarden.pipeline.rollout import conversation_bucket
from ctxwarden.pricing import ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Pricing
from ctxwarden.dialects.anthropic.markers import count_breakpoints
from tests.unit.pipeline_helpers import count_request_tokens
from tests.strict_wire import chat_problems

from .pipeline_helpers import (SYSTEM, agent_conversation, anthropic_conversation, anthropic_requests,
                               anthropic_session, dumps, interject_session, lookup,
                               latest_user_kept, mixed_turn_session, openai_requests, openai_session, replay,
                               session, system_kept, without_markers)

DIALECTS = ["openai", "anthropic"]
EPHEMERAL = {"type": "ephemeral"}
PLANTED = "zq_limit_7f3a = 91731"
QUESTION = "What value did zq_limit_7f3a have?"


def pricing_of(dialect: str) -> Pricing:
    return ANTHROPIC_PRICING if dialect == "anthropic" else OPENAI_PRICING


def plan_for(dialect: str, budget: int = 8000, **kwargs) -> RewritePlan:
    return RewritePlan(budget=budget, pricing=kwargs.pop("pricing", pricing_of(dialect)), **kwargs)


# ------------------------------------------------------------------ below the threshold

@pytest.mark.parametrize("dialect", DIALECTS)
def test_below_the_threshold_the_very_same_body(dialect):
    make = anthropic_conversation if dialect == "anthropic" else agent_conversation
    body = make([("ls", "a.py b.py"), ("cat a.py", "print('hi')")])
    plan = plan_for(dialect, budget=100_000)
    out = rewrite_turn(body, dialect, plan)
    assert out.body is body
    assert out.decision == "unchanged" and not out.changed and out.warning is None
    assert out.tokens_after == out.tokens_before == count_request_tokens(body, dialect)
    assert out.tokens_before <= plan.threshold_tokens


def test_threshold_zero_manages_even_a_small_request():
    body = agent_conversation([("ls", "a.py")])
    plan = RewritePlan(budget=100_000, compression_threshold=0.0)
    out = rewrite_turn(body, "openai", plan)
    assert out.decision == "append"
    assert out.body["messages"] == body["messages"]
    assert check_turn(body, out.body, "openai", plan, out.tokens_after) == []


# ------------------------------------------------------------------ a long agent session, turn by turn

@pytest.mark.parametrize("dialect", DIALECTS)
def test_long_agent_session_replayed_turn_by_turn(dialect):
    requests = session(dialect, 70, lines=60)
    plan = plan_for(dialect, budget=8000)
    assert count_request_tokens(requests[-1], dialect) > 6 * plan.budget
    decisions = []
    previous = None
    appended_checks = 0
    for turn in replay(requests, dialect, plan):
        body, out = turn.body, turn.outcome
        sent = out.body
        decisions.append(out.decision)
        assert out.decision in ("unchanged", "append", "compact"), out.reason
        assert out.warning is None
        actual = count_request_tokens(sent, dialect)
        assert actual <= plan.budget
        assert out.tokens_after >= actual, "tokens_after never under-counts what is sent"
        assert check_turn(body, sent, dialect, plan, out.tokens_after) == []
        assert chat_problems(dialect, sent) == []
        assert system_kept(body, sent, dialect)
        assert latest_user_kept(body, sent, dialect)
        for key in body:
            if key != "messages":
                assert sent[key] is body[key], key
        if out.decision != "unchanged":
            assert out.state is not None and out.state.key == conversation_keys(body, dialect)[-1]
        # between two compactions a turn only appends to what the previous turn sent
        # (cache_control markers aside: they move)
        if previous is not None and out.decision != "compact":
            before = without_markers(previous["messages"])
            assert without_markers(sent["messages"])[:len(before)] == before
            appended_checks += 1
        previous = sent
    compactions = decisions.count("compact")
    assert 3 <= compactions <= len(requests) // 4, decisions
    assert appended_checks >= len(requests) // 2
    assert "unchanged" in decisions[:5]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_state_is_found_turn_after_turn(dialect):
    turns = list(replay(session(dialect, 30), dialect, plan_for(dialect, budget=6000)))
    managed = [t for t in turns if t.outcome.decision != "unchanged"]
    assert len(managed) > 10
    assert all(t.state_found for t in managed[1:])


def test_anthropic_string_content_keeps_its_bytes_from_turn_to_turn():
    # a marker is never put on string content: that would send it as a block
    # this turn and as a string the next, and the cached prefix would break
    requests = anthropic_session(12, chatty_every=3)
    plan = plan_for("anthropic", budget=60_000, compression_threshold=0.0)
    previous = None
    for turn in replay(requests, "anthropic", plan):
        assert turn.outcome.decision == "append"
        sent = without_markers(turn.outcome.body["messages"])
        if previous is not None:
            assert sent[:len(previous)] == previous
        previous = sent


# ------------------------------------------------------------------ stateless == stateful

@pytest.mark.parametrize("dialect", DIALECTS)
def test_stateless_equals_stateful_on_every_turn(dialect):
    requests = session(dialect, 45, lines=50)
    plan = plan_for(dialect, budget=7000)
    seen = set()
    for turn in replay(requests, dialect, plan):
        alone = rewrite_turn(turn.body, dialect, plan, None)
        assert dumps(alone.body) == dumps(turn.outcome.body)
        assert alone.decision == turn.outcome.decision
        assert alone.state == turn.outcome.state
        seen.add(turn.outcome.decision)
    assert {"unchanged", "append", "compact"} <= seen


@pytest.mark.parametrize("dialect", DIALECTS)
def test_same_input_same_bytes(dialect):
    body = session(dialect, 40)[-1]
    plan = plan_for(dialect, budget=5000)
    first = rewrite_turn(body, dialect, plan)
    again = rewrite_turn(json.loads(json.dumps(body)), dialect, plan)
    assert first.state.compacted > 0
    assert dumps(first.body) == dumps(again.body)


# ------------------------------------------------------------------ the state

@pytest.mark.parametrize("dialect", DIALECTS)
def test_state_round_trip_and_continuing_from_it(dialect):
    requests = session(dialect, 40)
    plan = plan_for(dialect, budget=6000)
    store: dict = {}
    turns = list(replay(requests[:-1], dialect, plan, store))
    assert any(t.outcome.decision == "compact" for t in turns)
    state = turns[-1].outcome.state
    assert state.note is not None and state.entries
    restored = ConversationState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.to_bytes() == state.to_bytes()
    last = requests[-1]
    keys = conversation_keys(last, dialect)
    assert lookup(store, keys) is state
    direct = rewrite_turn(last, dialect, plan, state, keys)
    via_bytes = rewrite_turn(last, dialect, plan, restored, keys)
    assert dumps(direct.body) == dumps(via_bytes.body)
    assert direct.state == via_bytes.state


def test_a_state_that_does_not_fit_the_request_is_ignored():
    requests = openai_session(30)
    plan = plan_for("openai", budget=6000)
    long_state = list(replay(requests, "openai", plan))[-1].outcome.state
    short = requests[10]
    assert long_state.covered > len(short["messages"])
    out = rewrite_turn(short, "openai", plan, long_state)
    assert dumps(out.body) == dumps(rewrite_turn(short, "openai", plan).body)


def test_a_state_made_under_another_plan_is_replayed_not_continued():
    # a reload that changes the budget or the encoding must not reuse counts or cuts made under the old plan
    requests = openai_session(30)
    old = plan_for("openai", budget=6000)
    state = list(replay(requests[:-1], "openai", old))[-1].outcome.state
    for new in (plan_for("openai", budget=5000), RewritePlan(budget=6000, encoding="o200k_base", pricing=OPENAI_PRICING)):
        out = rewrite_turn(requests[-1], "openai", new, state)
        assert dumps(out.body) == dumps(rewrite_turn(requests[-1], "openai", new).body)
        assert out.state is not None and out.state.plan != state.plan


def test_conversation_keys():
    body = openai_session(5)[-1]
    keys = conversation_keys(body, "openai")
    assert len(keys) == len(body["messages"]) and len(set(keys)) == len(keys)
    shorter = {**body, "messages": body["messages"][:4]}
    assert conversation_keys(shorter, "openai") == keys[:4]
    assert conversation_keys(body, "anthropic") != keys
    assert conversation_keys({**body, "model": "other"}, "openai")[0] != keys[0]
    # a breakpoint the client moves does not make it another conversation
    a = anthropic_session(4)[-1]
    moved = json.loads(json.dumps(a))
    moved["messages"][1]["content"][-1]["cache_control"] = EPHEMERAL
    assert conversation_keys(moved, "anthropic") == conversation_keys(a, "anthropic")


# ------------------------------------------------------------------ planted fact, recalled

def planted_output() -> str:
    lines = [f"option_{j}_timeout = {j * 3}" for j in range(25)] + [PLANTED] + \
            [f"retry_{j}_backoff = {j}" for j in range(25)]
    return "\n".join(lines)


@pytest.mark.parametrize("stateful", [True, False])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_planted_fact_is_recalled_verbatim(dialect, stateful):
    requests = session(dialect, 50, first_output=planted_output(), final_user=QUESTION)
    plan = plan_for(dialect, budget=8000)
    if stateful:
        turns = list(replay(requests, dialect, plan))
        assert sum(t.outcome.decision == "compact" for t in turns) >= 2
        out = turns[-1].outcome
    else:
        out = rewrite_turn(requests[-1], dialect, plan, None)
    body, sent = requests[-1], out.body
    assert out.decision in ("append", "compact")
    # the planted line was compacted away: only the recall brings it back
    assert PLANTED not in (out.state.note or "")
    texts = [text for m in sent["messages"] for text in _texts(m)]
    recalls = [text for text in texts if text.startswith(f"{MARKER_PREFIX} recalled]")]
    assert [r for r in recalls if PLANTED in r] == [recalls[-1]]
    assert "    " + PLANTED in recalls[-1].split("\n")       # the whole line, verbatim
    assert "cat src/pkg/settings.ini" in recalls[-1]          # with the call it came from
    # this turn's recall comes after what was sent before and just before the latest user words
    assert texts[-2:] == [recalls[-1], QUESTION]
    assert latest_user_kept(body, sent, dialect)
    assert chat_problems(dialect, sent) == []
    assert check_turn(body, sent, dialect, plan, out.tokens_after) == []


def test_no_recall_when_pruning_distance_is_zero():
    requests = openai_session(50, first_output=planted_output(), final_user=QUESTION)
    out = rewrite_turn(requests[-1], "openai", plan_for("openai", budget=8000, pruning_distance=0))
    assert PLANTED not in json.dumps(out.body)


def _texts(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content or () if isinstance(b, dict) and b.get("type") == "text"]


# ------------------------------------------------------------------ overflow

HUGE = "\n".join(f"line {j:05d}: build step {j} finished in {j % 97} ms" for j in range(6000))


def overflow_body(dialect):
    make = anthropic_conversation if dialect == "anthropic" else agent_conversation
    return make([("ls", "a.py b.py"), ("make build", HUGE)])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_overflow_fit_cuts_the_pending_output(dialect):
    body = overflow_body(dialect)
    plan = plan_for(dialect, budget=4000)
    assert plan.critical_overflow == "fit"
    assert count_request_tokens(body, dialect) > 20 * plan.budget
    out = rewrite_turn(body, dialect, plan)
    sent = out.body
    assert out.decision == "compact" and out.changed
    assert count_request_tokens(sent, dialect) <= plan.budget
    assert check_turn(body, sent, dialect, plan, out.tokens_after) == []
    assert chat_problems(dialect, sent) == []
    assert system_kept(body, sent, dialect) and latest_user_kept(body, sent, dialect)
    output = dumps(sent["messages"][-1])
    omitted = [int(n) for n in re.findall(r"\[ctxwarden: (\d+) lines omitted\]", output)]
    assert omitted and 0 < sum(omitted) < 6000
    assert "line 00000:" in output and "line 05999:" in output      # head and tail
    kept = len(re.findall(r"line \d{5}:", output))
    assert kept + sum(omitted) == 6000
    # the cut output stays as it was cut on the next turn: the prefix holds
    make_next = {**body, "messages": body["messages"] + (
        [{"role": "assistant", "content": "The build finished."}, {"role": "user", "content": "Thanks, now run it."}])}
    nxt = rewrite_turn(make_next, dialect, plan, out.state)
    assert nxt.decision == "append"
    before = without_markers(sent["messages"])
    assert without_markers(nxt.body["messages"])[:len(before)] == before
    assert dumps(nxt.body) == dumps(rewrite_turn(make_next, dialect, plan).body)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_overflow_reject_refuses(dialect):
    body = overflow_body(dialect)
    out = rewrite_turn(body, dialect, plan_for(dialect, budget=4000, critical_overflow="reject"))
    assert out.decision == "refused" and out.warning and out.reason
    assert out.body is body and not out.changed


@pytest.mark.parametrize("dialect", DIALECTS)
def test_overflow_passthrough_sends_it_unchanged(dialect):
    body = overflow_body(dialect)
    out = rewrite_turn(body, dialect, plan_for(dialect, budget=4000, critical_overflow="passthrough"))
    assert out.decision == "passthrough" and out.warning and out.warning.startswith("passed through unchanged")
    assert out.body is body and not out.changed
    assert out.tokens_after == out.tokens_before


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_never_cut_part_over_budget_is_not_cut(dialect):
    make = anthropic_conversation if dialect == "anthropic" else agent_conversation
    body = make([("ls", "a.py")], task="Explain this log:\n" + HUGE)
    out = rewrite_turn(body, dialect, plan_for(dialect, budget=4000))
    assert out.decision == "passthrough" and out.warning
    assert out.body is body


# ------------------------------------------------------------------ invalid order

@pytest.mark.parametrize("dialect", DIALECTS)
def test_invalid_message_order_passes_through_with_a_warning(dialect):
    body = json.loads(json.dumps(session(dialect, 20)[-1]))
    if dialect == "openai":
        body["messages"].insert(2, {"role": "tool", "tool_call_id": "nobody", "content": "orphan"})
    else:
        body["messages"].insert(1, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_x", "name": "bash", "input": {}}]})
        body["messages"].insert(2, {"role": "user", "content": "no result here"})
    out = rewrite_turn(body, dialect, plan_for(dialect, budget=3000))
    assert out.decision == "passthrough" and out.body is body
    assert out.warning and "not valid" in out.warning


def test_unknown_message_shape_passes_through():
    body = json.loads(json.dumps(openai_session(20)[-1]))
    body["messages"].append({"role": "wizard", "content": "??"})
    out = rewrite_turn(body, "openai", plan_for("openai", budget=3000))
    assert out.decision == "passthrough" and out.body is body and out.warning


# ------------------------------------------------------------------ cache hints

def _marks_at_last_message(body: dict) -> bool:
    """The end of the request carries a breakpoint: its last message, or, when
    that is a string (never rewritten into a block), the last message that has
    blocks."""
    messages = body["messages"]
    last = max(i for i, m in enumerate(messages) if isinstance(m["content"], list))
    assert all(isinstance(m["content"], str) for m in messages[last + 1:])
    return "cache_control" in messages[last]["content"][-1]


@pytest.mark.parametrize("client_marks", [0, 1, 2, 3, 4])
def test_anthropic_cache_breakpoints(client_marks):
    system = [{"type": "text", "text": SYSTEM, **({"cache_control": EPHEMERAL} if client_marks >= 1 else {})},
              {"type": "text", "text": "Be brief.", **({"cache_control": EPHEMERAL} if client_marks >= 2 else {})}]
    tools = [{"name": f"tool_{i}", "description": "d", "input_schema": {"type": "object"},
              **({"cache_control": EPHEMERAL} if client_marks >= 3 + i else {})} for i in range(2)]
    requests = anthropic_session(40, system=system, tools=tools)
    plan = plan_for("anthropic", budget=8000)
    decisions = set()
    for turn in replay(requests, "anthropic", plan):
        sent, out = turn.outcome.body, turn.outcome
        decisions.add(out.decision)
        assert count_breakpoints(sent) <= 4
        assert chat_problems("anthropic", sent) == []
        assert sent["system"] is system and sent["tools"] is tools   # the client's own never move
        if out.decision == "unchanged":
            assert sent is turn.body
            continue
        if client_marks < 4:
            assert _marks_at_last_message(sent)
        # the end, and after a compaction the end of the stable prefix, as far as the client leaves room
        ours = 2 if out.state.note is not None else 1
        assert count_breakpoints(sent) == min(4, client_marks + ours)
    assert "compact" in decisions


def test_anthropic_last_free_breakpoint_goes_to_the_end():
    system = [{"type": "text", "text": SYSTEM, "cache_control": EPHEMERAL},
              {"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]
    tools = [{"name": "t", "description": "d", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    requests = anthropic_session(30, system=system, tools=tools)
    turns = list(replay(requests, "anthropic", plan_for("anthropic", budget=8000)))
    assert any(t.outcome.decision == "compact" for t in turns)
    for turn in turns:
        if turn.outcome.decision != "unchanged":
            assert _marks_at_last_message(turn.outcome.body)


def test_anthropic_markers_off_adds_none():
    pricing = Pricing(cache="anthropic", read=0.1, write=1.25, markers=False)
    for turn in replay(anthropic_session(30), "anthropic", plan_for("anthropic", budget=6000, pricing=pricing)):
        assert count_breakpoints(turn.outcome.body) == 0


def test_openai_prompt_cache_key_set_when_none_and_never_overridden():
    requests = openai_session(30)
    plan = plan_for("openai", budget=6000)
    managed = 0
    for turn in replay(requests, "openai", plan):
        sent = turn.outcome.body
        if turn.outcome.decision == "unchanged":
            assert "prompt_cache_key" not in sent
            continue
        managed += 1
        assert isinstance(sent["prompt_cache_key"], str) and sent["prompt_cache_key"]
        assert list(sent)[:-1] == list(turn.body)
        assert "cache_control" not in dumps(sent)
    assert managed > 10
    mine = [{**r, "prompt_cache_key": "client-key"} for r in requests]
    for turn in replay(mine, "openai", plan):
        assert turn.outcome.body["prompt_cache_key"] == "client-key"
    for pricing in (NO_CACHE_PRICING, Pricing(cache="openai", prompt_cache_key=False)):
        for turn in replay(requests, "openai", plan_for("openai", budget=6000, pricing=pricing)):
            assert "prompt_cache_key" not in turn.outcome.body


def test_openai_prompt_cache_key_is_the_same_for_a_whole_conversation():
    keys = {turn.outcome.body.get("prompt_cache_key")
            for turn in replay(openai_session(30), "openai", plan_for("openai", budget=6000))
            if turn.outcome.decision != "unchanged"}
    assert len(keys) == 1
    other = {turn.outcome.body.get("prompt_cache_key")
             for turn in replay(openai_session(30, task="Another task entirely."), "openai",
                                plan_for("openai", budget=6000))
             if turn.outcome.decision != "unchanged"}
    assert len(other) == 1 and other != keys


# ------------------------------------------------------------------ explain

@pytest.mark.parametrize("dialect", DIALECTS)
def test_explain_turn(dialect):
    body = session(dialect, 40)[-1]
    plan = plan_for(dialect, budget=6000)
    d = explain_turn(body, dialect, plan)
    json.dumps(d)
    assert d["decision"] in ("append", "compact") and d["reason"]
    assert dumps(d["request"]) == dumps(rewrite_turn(body, dialect, plan).body)
    rows = d["messages"]
    assert [r["index"] for r in rows] == list(range(len(body["messages"])))
    assert [r["role"] for r in rows] == [m["role"] for m in body["messages"]]
    assert {r["action"] for r in rows} == {"kept", "compacted"}
    assert all(r["reason"] for r in rows)
    assert rows[-1]["action"] == "kept" and rows[0]["action"] == "kept"
    assert d["tokens_after"] <= plan.budget < d["tokens_before"]
    assert d["note"] and d["note"].startswith(f"{MARKER_PREFIX} compacted]")
    # tiers: the note carries the compacted (supporting), the latest turn is critical,
    # recent turns kept verbatim are important; tokens per message before and after
    assert {r["tier"] for r in rows if r["action"] == "compacted"} == {"supporting"}
    assert rows[-1]["tier"] == "critical" and "important" in {r["tier"] for r in rows}
    assert all(r["tokens_after"] == 0 for r in rows if r["action"] == "compacted")
    assert all(r["tokens_after"] == r["tokens_before"] > 0 for r in rows if r["action"] == "kept")
    assert sum(r["tokens_before"] for r in rows) < d["tokens_before"]
    assert sum(r["tokens_after"] for r in rows) + d["note_tokens"] + d["recalled_tokens"] <= d["tokens_after"]


def test_explain_turn_small_request():
    body = agent_conversation([("ls", "a.py")])
    d = explain_turn(body, "openai", RewritePlan(budget=100_000))
    assert d["decision"] == "unchanged" and d["reason"] and not d["changed"]
    assert [r["action"] for r in d["messages"]] == ["kept"] * len(body["messages"])
    assert d["messages"][0]["tier"] == "critical"     # the system prompt
    assert d["messages"][-1]["tier"] == "critical"    # the latest turn


# ------------------------------------------------------------------ the priced ledger

@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_estimated_bill_is_below_passthrough(dialect):
    turns = list(replay(session(dialect, 80), dialect, plan_for(dialect, budget=8000)))
    ledger = turns[-1].outcome.state.ledger
    assert 0 < ledger[1] < ledger[0]
    managed = [t.outcome for t in turns if t.outcome.decision in ("append", "compact")]
    assert all(o.cost_sent > 0 and o.cost_passthrough > 0 for o in managed)
    assert sum(o.cost_sent for o in managed) < sum(o.cost_passthrough for o in managed)


# ------------------------------------------------------------------ engine bugs found by the property tests

# Conversations (as property-test specs) on which a turn reported as "append"
# changed what an earlier turn had sent.
APPEND_REWRITES = [
    ("openai", {"system": 2, "task": 0, "steps": [
        ("call", [(2500, "file", True), (250, "prose", True), (25, "log", True)], False),
        ("call", [(60, "file", False), (0, "log", False)], False), ("call", [(0, "file", False)], False),
        ("interject", [(60, "log", False), (250, "file", False)], False),
        ("call", [(250, "config", True), (250, "prose", False), (0, "prose", False)], True)]},
     RewritePlan(budget=6950, compression_threshold=0.9, pruning_distance=4, tier_shares=(10, 10, 70, 10),
                 pricing=OPENAI_PRICING, low_water=0.2)),
    ("openai", {"system": 0, "task": 1, "steps": [
        ("users", [(3, "log", True)], True), ("ask", [(25, "file", False), (1, "file", True)], False),
        ("call", [(2500, "log", True), (8, "file", True), (120, "file", True)], False),
        ("call", [(0, "log", True)], False),
        ("call", [(120, "config", False), (8, "file", True), (250, "file", False)], True),
        ("users", [(25, "config", True)], True),
        ("call", [(25, "prose", True), (60, "prose", True), (60, "config", True)], True),
        ("ask", [(250, "file", False)], True)]},
     RewritePlan(budget=2069, compression_threshold=0.0, pruning_distance=1, tier_shares=(25, 25, 25, 25),
                 pricing=NO_CACHE_PRICING, low_water=1 / 3)),
]


def test_an_append_never_changes_what_was_sent():
    # OpenAI: [system, task, call, 250-line output, user words] sent whole (5431 tokens of 6000),
    # then a 200-line output arrives: the first output is cut, decision "append"
    cases = [("openai", interject_session(250, 200), RewritePlan(budget=6000, compression_threshold=0.5))]
    cases += [(d, (openai_requests if d == "openai" else anthropic_requests)(spec), plan)
              for d, spec, plan in APPEND_REWRITES]
    for dialect, requests, plan in cases:
        previous = None
        for turn in replay(requests, dialect, plan):
            sent = without_markers(turn.outcome.body["messages"])
            if previous is not None and turn.outcome.decision == "append":
                assert sent[:len(previous)] == previous
            previous = sent if turn.outcome.decision in ("unchanged", "append", "compact") else None


def test_a_user_turn_with_tool_results_keeps_the_users_words():
    plan = RewritePlan(budget=3000, pricing=ANTHROPIC_PRICING)
    turns = list(replay(mixed_turn_session(250, 60), "anthropic", plan))
    assert [t.outcome.decision for t in turns[:1]] == ["compact"]   # the tool result cut to fit
    assert "cut to fit" in turns[0].outcome.reason
    for turn in turns:
        assert turn.outcome.decision in ("append", "compact"), turn.outcome.reason
        assert count_request_tokens(turn.outcome.body, "anthropic") <= plan.budget
        assert latest_user_kept(turn.body, turn.outcome.body, "anthropic")


# ------------------------------------------------------------------ rollout buckets

def test_conversation_bucket_stable():
    a = agent_conversation([("ls", "a")])
    b = agent_conversation([("ls", "a"), ("pwd", "/")])   # same opening, later turn
    c = agent_conversation([("ls", "a")], task="another task")
    assert conversation_bucket(a, "openai") == conversation_bucket(b, "openai")
    assert 0 <= conversation_bucket(a, "openai") < 100
    buckets = {conversation_bucket(agent_conversation([], task=f"t{i}"), "openai") for i in range(200)}
    assert len(buckets) > 50
    assert isinstance(conversation_bucket(c, "anthropic"), int)
