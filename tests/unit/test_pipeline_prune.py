from proxy.pipeline.classify import classify
from proxy.pipeline.plan import RewritePlan
from proxy.pipeline.prune import prune

from .pipeline_helpers import agent_conversation, conversation


def test_prunes_far_units_as_whole_units():
    outputs = [(f"echo step{i}", f"result of step {i}") for i in range(20)]
    body = agent_conversation(outputs)
    plan = RewritePlan(budget=1000, pruning_distance=2)
    msgs, _ = classify(conversation(body).messages, plan)
    out, report = prune(msgs, plan)
    pruned = [m for m in out if m.action == "pruned"]
    assert pruned and report["pruned_messages"] == len(pruned)
    assert all(m.tier != "critical" for m in pruned)
    assert all(m.hops is None or m.hops > 2 for m in pruned)
    by_unit = {}
    for m in out:
        by_unit.setdefault(m.unit, set()).add(m.action == "pruned")
    assert all(len(v) == 1 for v in by_unit.values())   # never half a unit


def test_identifier_keeps_old_definition_in_reach():
    outputs = [("cat src/core/resolver_impl.py", "class ResolverImpl:\n    def resolve_name(self): ...")]
    outputs += [(f"echo step{i}", f"result {i}") for i in range(15)]
    outputs += [("python -c 'import x'", "AttributeError: ResolverImpl.resolve_name missing")]
    body = agent_conversation(outputs)
    plan = RewritePlan(budget=1000, pruning_distance=2)
    msgs, _ = classify(conversation(body).messages, plan)
    out, _ = prune(msgs, plan)
    assert out[2].action != "pruned" and out[3].action != "pruned"   # the old definition stays
    assert out[12].action == "pruned"                                 # unrelated filler goes
