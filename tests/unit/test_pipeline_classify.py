from proxy.pipeline.classify import classify, focus_terms
from proxy.pipeline.plan import RewritePlan
from proxy.pipeline.prune import hop_distances

from .pipeline_helpers import agent_conversation, conversation


def test_tiers():
    outputs = [(f"cmd{i}", f"output {i}") for i in range(10)]
    body = agent_conversation(outputs)
    msgs, report = classify(conversation(body).messages, RewritePlan(budget=1000, pruning_distance=2))
    tiers = [m.tier for m in msgs]
    assert tiers[0] == "critical"                 # system
    assert tiers[1] == "critical"                 # latest (only) user message
    assert tiers[-1] == tiers[-2] == "critical"   # pending call + its result
    assert tiers[-3] == tiers[-4] == "important"  # recent
    assert "supporting" in tiers
    # a call and its result always share a tier
    for a, b in zip(msgs[2::2], msgs[3::2]):
        assert a.tier == b.tier and a.unit == b.unit
    assert sum(report["messages_per_tier"].values()) == len(msgs)


def test_opening_user_message_is_important_when_not_latest():
    body = agent_conversation([(f"cmd{i}", f"out {i}") for i in range(8)], final_user="now what?")
    msgs, _ = classify(conversation(body).messages, RewritePlan(budget=1000, pruning_distance=1))
    assert msgs[1].tier == "important"
    assert msgs[-1].tier == "critical"


def test_hops_through_shared_identifier():
    outputs = [("cat src/pkg/special_module.py", "def special_function(): pass")]
    outputs += [(f"echo filler{i}", f"nothing {i}") for i in range(12)]
    outputs += [("grep -n special_function src", "src/pkg/special_module.py:1: def special_function")]
    body = agent_conversation(outputs)
    msgs = conversation(body).messages
    last_unit = msgs[-1].unit
    dist = hop_distances(msgs, (last_unit,))
    first_read_unit = msgs[2].unit
    assert dist[first_read_unit] == 1            # shares identifiers with the focus
    assert dist[msgs[10].unit] > 1               # plain filler is only reachable turn by turn


def test_focus_terms_weigh_rare_identifiers():
    body = agent_conversation([("ls", "a b c"), ("cat x", "special_thing here")])
    msgs, _ = classify(conversation(body).messages, RewritePlan(budget=1000))
    w = focus_terms(msgs)
    assert w.get("special_thing", 0) > 0
