"""Property tests: the rewrite invariants hold for generated conversations, both dialects."""
import importlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.pipeline import RewritePlan, rewrite_request
from proxy.pipeline.classify import classify
from proxy.pipeline.invariants import check_outcome
from proxy.tokens import count_request_tokens

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
    return RewritePlan(
        budget=budget,
        compression_threshold=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        pruning_distance=draw(st.integers(0, 4)),
        tier_shares=draw(st.sampled_from([(20, 40, 30, 10), (10, 10, 70, 10), (50, 50, 0, 0), (25, 25, 25, 25)])),
        critical_overflow=draw(st.sampled_from(["passthrough", "reject"])),
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
