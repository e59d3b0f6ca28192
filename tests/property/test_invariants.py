"""Property tests: the rewrite invariants hold for generated conversations, both dialects."""
import importlib
import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.pipeline import RewritePlan, rewrite_request
from proxy.pipeline.classify import classify
from proxy.pipeline.invariants import check_outcome
from proxy.pipeline.checkpoint import TAIL_MAX_DIVISOR
from proxy.pipeline.model import MARKER_PREFIX
from proxy.tokens import count_message_tokens, count_request_tokens

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])

FILES = ["src/app/core.py", "src/app/util.py", "lib/parser_impl.py", "docs/README.md"]


def file_body(path: str, version: int) -> str:
    lines = [f"{i:5d}\tdef {path.split('/')[-1][:-3]}_fn_{i}(x):  # v{version if i == 7 else 0}" for i in range(1, 70)]
    return "\n".join(lines)


@st.composite
def tool_output(draw):
    kind = draw(st.sampled_from(["file", "file", "json", "ansi", "long", "short", "text", "special"]))
    if kind == "file":
        return file_body(draw(st.sampled_from(FILES)), draw(st.integers(0, 2)))
    if kind == "json":
        n = draw(st.integers(1, 40))
        return json.dumps({"items": [{"id": i, "path": FILES[i % 4], "ok": i % 3 == 0} for i in range(n)]}, indent=2)
    if kind == "ansi":
        n = draw(st.integers(1, 80))
        return "\n".join(f"\x1b[3{i % 7}mPASSED\x1b[0m tests/test_{i}.py::test_case_{i}    " for i in range(n))
    if kind == "long":
        n = draw(st.integers(50, 400))
        return "\n".join(f"log line {i}: value={i * 7} in {FILES[i % 4]}" for i in range(n))
    if kind == "short":
        return draw(st.sampled_from(["", "ok", "3 passed", "KeyError: 'x'", "E501 line too long"]))
    if kind == "special":
        return "before <|endoftext|> after <|im_start|>"
    return draw(st.text(max_size=200))


def openai_image():
    return {"type": "image_url", "image_url": {"url": "https://example.com/img.png", "detail": "low"}}


@st.composite
def openai_body(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": "You are a careful coding agent."})
    if draw(st.integers(0, 5)) == 0:
        msgs.append({"role": "developer", "content": "Prefer small diffs."})
    msgs.append({"role": "user", "content": draw(st.sampled_from(
        ["Fix the bug in src/app/core.py", "Why does lib/parser_impl.py fail?", "hello"]))})
    call_n = 0
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["tools", "tools", "tools", "text", "user", "image"]))
        if kind == "tools":
            k = draw(st.integers(1, 3))
            calls = []
            for _ in range(k):
                call_n += 1
                calls.append({"id": f"call_{call_n}", "type": "function",
                              "function": {"name": "bash",
                                           "arguments": json.dumps({"command": f"cat {draw(st.sampled_from(FILES))}"})}})
            msgs.append({"role": "assistant", "content": draw(st.sampled_from([None, "Let me look."])),
                         "tool_calls": calls})
            for c in calls:
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(tool_output())})
        elif kind == "text":
            msgs.append({"role": "assistant", "content": draw(tool_output())})
        elif kind == "user":
            msgs.append({"role": "user", "content": draw(tool_output())})
        else:
            msgs.append({"role": "user", "content": [{"type": "text", "text": "see this"}, openai_image()]})
    if draw(st.integers(0, 9)) == 0:
        msgs.insert(len(msgs) // 2, {"role": "wizard", "content": "unknown role"})
    if draw(st.booleans()):
        msgs.append({"role": "user", "content": draw(st.sampled_from(["continue", "now run the tests"]))})
    return {"model": "gpt-4o", "temperature": 0.2, "messages": msgs, "stream": False}


@st.composite
def anthropic_body(draw):
    msgs = [{"role": "user", "content": draw(st.sampled_from(
        ["Fix the bug in src/app/core.py", [{"type": "text", "text": "Why does lib/parser_impl.py fail?"}]]))}]
    use_n = 0
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["tools", "tools", "tools", "text", "image"]))
        if kind == "tools":
            k = draw(st.integers(1, 3))
            blocks = [{"type": "text", "text": "Checking."}] if draw(st.booleans()) else []
            ids = []
            for _ in range(k):
                use_n += 1
                ids.append(f"toolu_{use_n}")
                blocks.append({"type": "tool_use", "id": ids[-1], "name": "bash",
                               "input": {"command": f"cat {draw(st.sampled_from(FILES))}"}})
            msgs.append({"role": "assistant", "content": blocks})
            results = []
            for i in ids:
                if draw(st.booleans()):
                    content = draw(tool_output())
                else:
                    content = [{"type": "text", "text": draw(tool_output())}]
                results.append({"type": "tool_result", "tool_use_id": i, "content": content})
            if draw(st.integers(0, 4)) == 0:
                results.append({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}})
            msgs.append({"role": "user", "content": results})
        elif kind == "text":
            msgs.append({"role": "assistant", "content": draw(tool_output()) or "ok"})
            msgs.append({"role": "user", "content": draw(tool_output()) or "go on"})
        else:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": "Please share a screenshot."}]})
            msgs.append({"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "text", "text": "here"}]})
    if draw(st.integers(0, 5)) == 0:
        msgs.append({"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                                      {"type": "text", "text": "Done."}]})
    system = draw(st.sampled_from(["You are a careful coding agent.",
                                   [{"type": "text", "text": "You are careful.", "cache_control": {"type": "ephemeral"}}],
                                   None]))
    body = {"model": "claude-sonnet", "max_tokens": 1024, "messages": msgs}
    if system is not None:
        body["system"] = system
    return body


@st.composite
def plan_for(draw, body, dialect):
    total = count_request_tokens(body, dialect)
    if draw(st.integers(0, 4)) == 0:
        budget = draw(st.integers(min_value=50, max_value=max(60, int(total * 1.3))))
    else:  # mostly budgets the critical part fits in, so the rewrite itself is exercised
        critical = critical_tokens(body, dialect)
        budget = draw(st.integers(min_value=max(50, critical), max_value=max(60, critical, total)))
    every = draw(st.sampled_from([None, None, 0, "small", "mid"]))
    if every == "small":
        every = max(1, total // 5)
    elif every == "mid":
        every = max(1, total // 2)
    return RewritePlan(
        budget=budget,
        compression_threshold=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        pruning_distance=draw(st.integers(0, 4)),
        tier_shares=draw(st.sampled_from([(20, 40, 30, 10), (10, 10, 70, 10), (50, 50, 0, 0), (25, 25, 25, 25)])),
        critical_overflow=draw(st.sampled_from(["passthrough", "reject"])),
        checkpoint_every=every,
        checkpoint_target=draw(st.sampled_from([None, 50, 300, 2000])),
    )


def critical_tokens(body, dialect):
    mod = importlib.import_module(f"proxy.dialects.{dialect}")
    conv = mod.to_conversation(body)
    msgs, _ = classify(conv.messages, RewritePlan(budget=10))
    return conv.fixed_tokens + sum(m.tokens for m in msgs if m.tier == "critical")


def assert_invariants(body, dialect, plan):
    snapshot = json.dumps(body)
    out = rewrite_request(body, dialect, plan)
    assert json.dumps(body) == snapshot, "input mutated"
    problems = check_outcome(body, dialect, plan, out)
    assert problems == [], problems
    if out.tokens_before <= plan.threshold_tokens:
        assert out.body is body and not out.changed
    if out.changed:
        assert out.tokens_after <= plan.budget
    if out.refused:
        assert plan.critical_overflow == "reject" and out.critical_tokens > plan.budget
    again = rewrite_request(json.loads(snapshot), dialect, plan)
    assert json.dumps(again.body) == json.dumps(out.body), "not deterministic"
    assert (again.tokens_after, again.changed, again.refused) == (out.tokens_after, out.changed, out.refused)
    return out


@SETTINGS
@given(st.data())
def test_openai_invariants(data):
    body = data.draw(openai_body())
    plan = data.draw(plan_for(body, "openai"))
    assert_invariants(body, "openai", plan)


@SETTINGS
@given(st.data())
def test_anthropic_invariants(data):
    body = data.draw(anthropic_body())
    plan = data.draw(plan_for(body, "anthropic"))
    assert_invariants(body, "anthropic", plan)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rewrites_when_possible(data):
    """When the critical part fits and the structure is valid, an over-budget request is rewritten."""
    body = data.draw(openai_body())
    total = count_request_tokens(body, "openai")
    plan = RewritePlan(budget=max(50, total // 2), compression_threshold=0.0)
    out = assert_invariants(body, "openai", plan)
    if out.critical_tokens <= plan.budget and out.warning is None and total > plan.budget:
        assert out.changed and out.tokens_after <= plan.budget


# ---------------------------------------------------------------- stable prefixes

@st.composite
def openai_turn(draw, n):
    k = draw(st.integers(1, 2))
    calls = [{"id": f"ext_{n}_{j}", "type": "function",
              "function": {"name": "bash", "arguments": json.dumps({"command": f"cat {draw(st.sampled_from(FILES))}"})}}
             for j in range(k)]
    turn = [{"role": "assistant", "content": draw(st.sampled_from([None, "Next."])), "tool_calls": calls}]
    turn += [{"role": "tool", "tool_call_id": c["id"], "content": draw(tool_output())} for c in calls]
    if draw(st.booleans()):
        turn.append({"role": "user", "content": draw(st.sampled_from(["continue", "now run the tests"]))})
    return turn


@st.composite
def anthropic_turn(draw, n):
    k = draw(st.integers(1, 2))
    ids = [f"ext_{n}_{j}" for j in range(k)]
    uses = [{"type": "tool_use", "id": i, "name": "bash", "input": {"command": f"cat {draw(st.sampled_from(FILES))}"}}
            for i in ids]
    results = [{"type": "tool_result", "tool_use_id": i, "content": draw(tool_output())} for i in ids]
    return [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]


def message_tokens(body, dialect):
    mod = importlib.import_module(f"proxy.dialects.{dialect}")
    return sum(m.tokens for m in mod.to_conversation(body).messages)


def critical_wire_ids(body, dialect, plan):
    mod = importlib.import_module(f"proxy.dialects.{dialect}")
    msgs, _ = classify(mod.to_conversation(body).messages, plan, hops=False)
    return {id(m.wire) for m in msgs if m.tier == "critical"}


def check_prefix_property(data, dialect, body_strategy, turn_strategy):
    short = data.draw(body_strategy)
    if dialect == "anthropic" and short["messages"][-1]["role"] != "user":
        return
    ext = data.draw(turn_strategy(1))
    long = dict(short, messages=short["messages"] + ext)
    if data.draw(st.booleans()):
        long = dict(long, messages=long["messages"] + data.draw(turn_strategy(2)))
    total = message_tokens(short, dialect)
    plan = RewritePlan(budget=max(60, count_request_tokens(long, dialect) + 10), compression_threshold=0.0,
                       checkpoint_every=max(1, data.draw(st.integers(total // 4, max(total // 4, total)))),
                       checkpoint_target=data.draw(st.sampled_from([40, 200, 1000])))
    a = rewrite_request(short, dialect, plan)
    b = rewrite_request(long, dialect, plan)
    if not (a.checkpoint_key and a.checkpoint_key == b.checkpoint_key):
        event("no shared checkpoint")
        return
    event("shared checkpoint")
    assert a.compacted == b.compacted
    sa, sb = a.body["messages"], b.body["messages"]
    assert len(sb) >= len(sa)
    d = 0
    while d < len(sa) and json.dumps(sa[d]) == json.dumps(sb[d]):
        d += 1
    # exact prefix, except a very long / duplicate text that was still pending (critical) in the
    # shorter request: it is cut, with a ctxwarden marker, once it stops being pending
    critical = critical_wire_ids(short, dialect, plan)
    for j in range(d, len(sa)):
        if json.dumps(sa[j]) == json.dumps(sb[j]):
            continue
        assert id(sa[j]) in critical, f"message {j} changed although it was not critical"
        assert sa[j]["role"] == sb[j]["role"]
        assert (MARKER_PREFIX in json.dumps(sb[j])
                or count_message_tokens(sa[j], dialect) > plan.budget // TAIL_MAX_DIVISOR), (
            j, d, len(sa), len(sb), sa[j], sb[j], [m["role"] for m in sa], [m["role"] for m in sb])
    if d == len(sa):
        assert "".join(json.dumps(m) for m in sb).startswith("".join(json.dumps(m) for m in sa))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_openai_turn_extension_keeps_the_prefix(data):
    check_prefix_property(data, "openai", openai_body(), openai_turn)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_anthropic_turn_extension_keeps_the_prefix(data):
    check_prefix_property(data, "anthropic", anthropic_body(), anthropic_turn)
