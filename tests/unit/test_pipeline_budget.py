from proxy.pipeline.budget import assemble, budget
from proxy.pipeline.classify import classify
from proxy.pipeline.plan import RewritePlan
from proxy.pipeline.prune import is_dropped

from .pipeline_helpers import agent_conversation, conversation


def run(body, b, **kw):
    conv = conversation(body)
    plan = RewritePlan(budget=b, **kw)
    msgs, _ = classify(conv.messages, plan)
    out, report = budget(msgs, plan, conv.fixed_tokens, "openai")
    return conv, msgs, out, report, plan


def test_fits_and_never_cuts_critical():
    outputs = [(f"cat file_{i}.py", "\n".join(f"x{i}_{j} = {j}" for j in range(40))) for i in range(20)]
    body = agent_conversation(outputs)
    conv, msgs, out, report, plan = run(body, 2000)
    final = assemble(out, "openai", plan.encoding)
    total = conv.fixed_tokens + sum(m.tokens for m in final)
    assert total <= 2000
    assert all(not is_dropped(m) for m in out if m.tier == "critical")
    # whole units only: a call is never kept without its result
    for u in {m.unit for m in out}:
        assert len({is_dropped(m) for m in out if m.unit == u}) == 1


def test_critical_overflow_reported():
    body = agent_conversation([("cat big", "word " * 3000)])
    _, _, out, report, _ = run(body, 500)
    assert report.get("overflow") is True


def test_unused_share_flows_to_next_tier():
    # critical is tiny, so important may use more than its own 40%
    outputs = [(f"cmd{i}", " ".join(f"w{i}x{j}" for j in range(30))) for i in range(12)] + [("ls", "a")]
    body = agent_conversation(outputs, task="go")
    conv, msgs, out, report, plan = run(body, 1000, pruning_distance=20)
    assert report["critical_tokens"] < 100
    imp = report["used_by_tier"]["important"]
    assert imp > 400   # more than its own 40% share thanks to critical's unused share
    assert conv.fixed_tokens + sum(m.tokens for m in assemble(out, "openai", plan.encoding)) <= 1000


def test_markers_only_before_latest_user_in_openai():
    outputs = [(f"cmd{i}", "y" * 300 + f" {i}") for i in range(10)]
    body = agent_conversation(outputs, final_user="continue")
    conv, msgs, out, report, plan = run(body, 900)
    final = assemble(out, "openai", plan.encoding)
    roles = [m.role for m in final]
    last_user = max(i for i, r in enumerate(roles) if r == "user")
    assert final[last_user].wire is body["messages"][-1]
    markers = [m for m in final if m.action == "marker"]
    assert markers and all(m.wire["content"].startswith("[ctxwarden:") for m in markers)
