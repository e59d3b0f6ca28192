import json

from proxy.pipeline import RewritePlan, explain, rewrite_request
from proxy.pipeline.invariants import check_outcome
from proxy.pipeline.rollout import conversation_bucket

from .pipeline_helpers import agent_conversation


def big_body(n=30):
    outputs = [(f"cat src/m{i}.py", "\n".join(f"def f{i}_{j}(): return {j}" for j in range(60))) for i in range(n)]
    return agent_conversation(outputs)


def test_small_request_untouched_same_object():
    body = agent_conversation([("ls", "a")])
    out = rewrite_request(body, "openai", RewritePlan(budget=100_000))
    assert out.body is body and not out.changed and out.tokens_after == out.tokens_before


def test_big_request_rewritten_within_budget():
    body = big_body()
    plan = RewritePlan(budget=3000)
    out = rewrite_request(body, "openai", plan)
    assert out.changed and out.tokens_after <= 3000 < out.tokens_before
    assert check_outcome(body, "openai", plan, out) == []
    assert out.body["model"] == "m" and out.body["messages"][0] is body["messages"][0]
    assert {r.action for r in out.report} >= {"kept"}
    again = rewrite_request(body, "openai", plan)
    assert json.dumps(again.body) == json.dumps(out.body)


def test_reject_and_passthrough_on_critical_overflow():
    body = agent_conversation([("cat big", "word " * 5000)])
    out = rewrite_request(body, "openai", RewritePlan(budget=1000, critical_overflow="reject"))
    assert out.refused and "needs" in out.refused and str(out.critical_tokens) in out.refused
    assert out.body is body and not out.changed
    out = rewrite_request(body, "openai", RewritePlan(budget=1000))
    assert out.refused is None and out.warning and out.body is body


def test_explain_is_json():
    body = big_body(10)
    d = explain(body, "openai", RewritePlan(budget=2000))
    json.dumps(d)
    assert d["changed"] and d["tokens_after"] <= 2000
    assert len([m for m in d["messages"] if m["index"] >= 0]) == len(body["messages"])
    assert {"index", "role", "tier", "hops", "action", "tokens_before", "tokens_after"} <= set(d["messages"][0])


def test_anthropic_rewrite():
    msgs = [{"role": "user", "content": "Fix the parser"}]
    for i in range(20):
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "bash",
                                                       "input": {"cmd": f"cat f{i}.py"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}",
                                                  "content": "\n".join(f"line {j} of f{i}" for j in range(50))}]})
    body = {"model": "c", "max_tokens": 10, "system": "be brief", "messages": msgs}
    plan = RewritePlan(budget=2000)
    out = rewrite_request(body, "anthropic", plan)
    assert out.changed and out.tokens_after <= 2000
    assert check_outcome(body, "anthropic", plan, out) == []
    assert out.body["system"] == "be brief"


def test_unknown_dialect():
    import pytest
    with pytest.raises(ValueError):
        rewrite_request({}, "gemini", RewritePlan(budget=10))


def test_conversation_bucket_stable():
    a = agent_conversation([("ls", "a")])
    b = agent_conversation([("ls", "a"), ("pwd", "/")])   # same opening, later turn
    c = agent_conversation([("ls", "a")], task="another task")
    assert conversation_bucket(a, "openai") == conversation_bucket(b, "openai")
    assert 0 <= conversation_bucket(a, "openai") < 100
    buckets = {conversation_bucket(agent_conversation([], task=f"t{i}"), "openai") for i in range(200)}
    assert len(buckets) > 50
    assert isinstance(conversation_bucket(c, "anthropic"), int)
