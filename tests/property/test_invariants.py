"""Property tests: generated agent conversations, replayed turn by turn through
the rewrite in every dialect, keep every invariant on every turn (each OpenAI
conversation is replayed as chat messages and as Responses input items).

On every turn of every example:

* the request fits the budget (recounted), or it is sent unchanged / refused
  with a warning, and only when the plan's ``critical_overflow`` says so;
* ``check_turn`` finds nothing and the strict validators of the real APIs find
  nothing;
* the system prompt and the latest message the user wrote are kept;
* the rewrite without state sends the very bytes the rewrite with state sends
  (the state goes through ``to_bytes`` / ``from_bytes`` between turns);
* between two compactions a turn's messages start with the previous turn's
  (cache_control markers aside: they move).

A property that no example reaches proves nothing, so each one counts how many
examples really reached it, and ``test_every_property_was_reached`` (the last
test of this module) asserts a floor on each count.
"""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ctxwarden.dialects import get_dialect
from ctxwarden.pipeline import ConversationState, RewritePlan, conversation_keys, rewrite_turn
from ctxwarden.pipeline.invariants import check_turn
from ctxwarden.pipeline.text import MARKER_PREFIX
from ctxwarden.pricing import ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Pricing
from tests.unit.pipeline_helpers import count_request_tokens
from tests.strict_wire import chat_problems
from tests.unit.pipeline_helpers import (STEP_KINDS, STYLES, anthropic_requests, dumps, latest_user_kept,
                                         openai_requests, responses_request, system_kept, without_markers)

MAX_EXAMPLES = 100
# derandomize: the same examples on every run, so the floors below are stable;
# no shrinking: one example replays a whole conversation twice, and shrinking
# takes minutes; a failure prints the drawn spec, which is small by design.
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SIZES = [0, 1, 3, 8, 25, 60, 120, 250]     # lines of a tool output
HUGE = 2500                                  # a tool output far over any budget drawn here

# how many examples reached each property, per dialect
REACHED: dict[str, Counter] = {"openai": Counter(), "anthropic": Counter(), "responses": Counter()}


# ------------------------------------------------------------------ conversations

# A conversation is drawn as a small spec (what hypothesis prints when a
# property fails) and built into its requests by pipeline_helpers.

output_spec = st.tuples(
    st.sampled_from(SIZES * 3 + [HUGE]),            # lines: one output in 25 far over any budget
    st.sampled_from(STYLES),
    st.booleans(),                                   # Anthropic: tool_result content as text blocks
)
step_spec = st.tuples(
    st.sampled_from(STEP_KINDS + ["ask"]),
    st.lists(output_spec, min_size=1, max_size=3),   # the outputs, for the kinds that call tools
    st.booleans(),                                   # the assistant also says something / block form
)
conversation_spec = st.fixed_dictionaries({
    "system": st.integers(0, 3),
    "task": st.integers(0, 2),
    "steps": st.lists(step_spec, min_size=1, max_size=18),
})


@st.composite
def plans(draw, dialect: str):
    own = ANTHROPIC_PRICING if dialect == "anthropic" else OPENAI_PRICING
    return RewritePlan(
        budget=draw(st.integers(1500, 8000)),
        compression_threshold=draw(st.sampled_from([0.0, 0.5, 0.7, 0.9])),
        pruning_distance=draw(st.integers(0, 4)),
        tier_shares=draw(st.sampled_from([(20, 40, 30, 10), (10, 10, 70, 10), (50, 50, 0, 0), (25, 25, 25, 25)])),
        critical_overflow=draw(st.sampled_from(["fit", "fit", "fit", "passthrough", "reject"])),
        pricing=draw(st.sampled_from([own, own, own, NO_CACHE_PRICING, Pricing(cache="openai", read=0.5),
                                      ANTHROPIC_PRICING if dialect == "openai" else OPENAI_PRICING])),
        low_water=draw(st.sampled_from([1 / 3, 1 / 3, 0.5, 0.2])),
    )


# ------------------------------------------------------------------ the checks

def canonical(messages: list) -> list:
    """As the provider's cache matches them: cache_control markers removed (they move)."""
    return without_markers(messages)


def replay_and_check(requests: list[dict], dialect: str, plan: RewritePlan) -> None:
    reached = REACHED[dialect]
    reached["examples"] += 1
    field = get_dialect(dialect).conversation_field
    store: dict[str, bytes] = {}          # the cache backend: states as bytes
    previous = None                       # (decision, reason, sent) of the previous turn
    seen = Counter()
    for body in requests:
        keys = conversation_keys(body, dialect)
        raw = next((store[k] for k in reversed(keys) if k in store), None)
        state = None if raw is None else ConversationState.from_bytes(raw)
        out = rewrite_turn(body, dialect, plan, state, keys)
        if out.state is not None:
            assert ConversationState.from_bytes(out.state.to_bytes()) == out.state
            store[out.state.key] = out.state.to_bytes()
        sent = out.body
        seen[out.decision] += 1

        # stateless == stateful, byte for byte
        alone = rewrite_turn(body, dialect, plan, None)
        assert dumps(alone.body) == dumps(sent), f"stateless differs on a {out.decision} turn"
        assert alone.decision == out.decision

        if out.decision == "unchanged":
            assert sent is body and out.tokens_before <= plan.threshold_tokens
        elif out.decision in ("passthrough", "refused"):
            assert sent is body and out.warning, out.decision
            assert "needs more than the budget" in out.reason, f"{out.decision}: {out.reason}"
            assert plan.critical_overflow == ("reject" if out.decision == "refused" else "passthrough"), \
                f"{out.decision} with critical_overflow={plan.critical_overflow}: {out.reason}"
            seen[f"overflow {out.decision}"] += 1
        else:
            assert out.decision in ("append", "compact"), out.decision
            assert out.warning is None
            actual = count_request_tokens(sent, dialect)
            assert actual <= plan.budget
            assert out.tokens_after >= actual
            assert check_turn(body, sent, dialect, plan, out.tokens_after) == []
            assert chat_problems(dialect, sent) == []
            assert system_kept(body, sent, dialect) and latest_user_kept(body, sent, dialect)
            assert all(sent[k] is v for k, v in body.items() if k != field)
            text = dumps(sent[field])
            if "lines omitted]" in text or "characters omitted]" in text:
                seen["cut"] += 1
            if f"{MARKER_PREFIX} recalled]" in text:
                seen["recalled"] += 1

        # between two compactions a turn only appends to what the previous turn sent
        if out.decision in ("unchanged", "append") and previous is not None and previous[0] != "refused":
            before = canonical(previous[2][field])
            now = canonical(sent[field])
            changed = [i for i, m in enumerate(before) if i >= len(now) or now[i] != m]
            assert not changed, f"a sent prefix changed at messages {changed} on an {out.decision} turn"
            seen["appended"] += 1
            if out.state is not None and out.state.note is not None:
                seen["appended_after_compaction"] += 1
        previous = (out.decision, out.reason, sent)
    last = requests[-1][field]
    seen["two user messages in a row"] = sum(a.get("role") == b.get("role") == "user" for a, b in zip(last, last[1:]))
    for name, count in seen.items():
        if count:
            reached[name] += 1
    if dialect == "openai":
        replay_and_check([responses_request(body) for body in requests], "responses", plan)


# ------------------------------------------------------------------ the properties

@SETTINGS
@given(st.data())
def test_openai_conversations_keep_the_invariants(data):
    spec = data.draw(conversation_spec)
    plan = data.draw(plans("openai"))
    replay_and_check(openai_requests(spec), "openai", plan)


@SETTINGS
@given(st.data())
def test_anthropic_conversations_keep_the_invariants(data):
    spec = data.draw(conversation_spec)
    plan = data.draw(plans("anthropic"))
    replay_and_check(anthropic_requests(spec), "anthropic", plan)


# floors: at least this share of the examples reached each property
FLOORS = {
    "append": 0.30,                       # a rewritten turn that appended (fits, checked, validated)
    "compact": 0.30,                      # compacted at least once
    "appended_after_compaction": 0.20,    # a turn appended to a compacted prefix
    "appended": 0.50,                     # a turn checked against the previous one
    "cut": 0.05,                          # a pending output cut to fit
    "recalled": 0.04,                     # a recall message sent
    "overflow passthrough": 0.02,         # an output over the budget passed through
    "overflow refused": 0.02,             # an output over the budget refused
    "unchanged": 0.20,                    # a turn below the threshold
    "two user messages in a row": 0.10,   # one user turn in two messages
}


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "responses"])
def test_every_property_was_reached(dialect):
    reached = REACHED[dialect]
    if not reached["examples"]:
        pytest.skip("the property tests of this dialect did not run in this session")
    assert reached["examples"] >= MAX_EXAMPLES
    low = {name: f"{reached[name]}/{reached['examples']}" for name, floor in FLOORS.items()
           if reached[name] < floor * reached["examples"]}
    print(dialect, dict(reached))
    assert not low, f"too few examples reached: {low} (all: {dict(reached)})"
    known = {name: count for name, count in reached.items() if name.startswith("known bug")}
    if known:
        print(f"{dialect}: examples that met a known engine bug: {known}")
