import json

import pytest

from proxy.dialects import anthropic as an
from proxy.dialects import openai as oa
from proxy.pipeline import RewritePlan, checkpoint_key, explain, rewrite_request
from proxy.pipeline.checkpoint import _figure_runs, _last_error_pos, find_split
from proxy.pipeline.invariants import check_outcome
from proxy.pipeline.model import MARKER_PREFIX

from .pipeline_helpers import agent_conversation


def outputs(n, lines=40, start=0):
    return [(f"cat src/pkg/mod_{i}.py",
             "\n".join(f"def helper_{i}_{j}(value): return value + {j}  # mod_{i}" for j in range(lines)))
            for i in range(start, start + n)]


def turn(body, i, text):
    """The same conversation one agent step later."""
    msgs = list(body["messages"])
    msgs.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": f"x{i}", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]})
    msgs.append({"role": "tool", "tool_call_id": f"x{i}", "content": text})
    return {**body, "messages": msgs}


def serialised(messages):
    return "".join(json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in messages)


PLAN = RewritePlan(budget=4000, checkpoint_every=1500, checkpoint_target=600)


def test_plan_checkpoint_defaults_and_validation():
    p = RewritePlan(budget=16000)
    assert p.checkpoint_every is None and p.checkpoint_target is None
    assert p.every_tokens == 16000 // 3 and p.target_tokens == 16000 * 3 // 16
    assert RewritePlan(budget=16000, checkpoint_every=0).every_tokens == 0
    assert RewritePlan(budget=16000, checkpoint_every=700, checkpoint_target=90).target_tokens == 90
    with pytest.raises(ValueError):
        RewritePlan(budget=100, checkpoint_every=-1)
    with pytest.raises(ValueError):
        RewritePlan(budget=100, checkpoint_target=1.5)


def test_split_is_a_unit_start_at_or_below_k_times_every():
    body = agent_conversation(outputs(12))
    conv = oa.to_conversation(body)
    split = find_split(conv, PLAN)
    assert split is not None
    b = split.boundary
    assert conv.messages[b].role == "assistant"
    total = sum(m.tokens for m in conv.messages)
    k = total // PLAN.every_tokens
    assert split.k == k and sum(m.tokens for m in conv.messages[:b]) <= k * PLAN.every_tokens
    assert 0 < b < len(conv.messages)
    assert find_split(conv, RewritePlan(budget=4000, checkpoint_every=0)) is None
    assert find_split(conv, RewritePlan(budget=4000, checkpoint_every=10 ** 9)) is None


def test_checkpoint_path_outcome():
    body = agent_conversation(outputs(12))
    out = rewrite_request(body, "openai", PLAN)
    assert out.changed and out.checkpoint_key and out.compacted
    assert check_outcome(body, "openai", PLAN, out) == []
    msgs = out.body["messages"]
    assert msgs[0] is body["messages"][0] and msgs[1] is body["messages"][1]   # system, task statement
    assert out.stable_prefix == len(out.compacted)
    assert list(out.compacted) == msgs[:out.stable_prefix]
    note = msgs[out.stable_prefix - 1]["content"]
    assert note.startswith(MARKER_PREFIX) and "mod_0.py" in note
    assert checkpoint_key(body, "openai", PLAN) == out.checkpoint_key
    actions = {r.action for r in out.report}
    assert "compacted" in actions and "marker" in actions


def test_compaction_depends_on_the_old_part_only():
    body = agent_conversation(outputs(16, lines=25))
    a = rewrite_request(body, "openai", PLAN)
    grown = turn(body, 1, "small output")
    b = rewrite_request(grown, "openai", PLAN)
    assert a.checkpoint_key == b.checkpoint_key
    assert a.compacted == b.compacted
    assert serialised(b.body["messages"]).startswith(serialised(a.body["messages"]))


def test_supplied_compaction_gives_the_same_result():
    body = agent_conversation(outputs(12))
    fresh = rewrite_request(body, "openai", PLAN)
    stored = json.loads(json.dumps(list(fresh.compacted)))          # as if from Redis
    reused = rewrite_request(body, "openai", PLAN, compacted=stored)
    assert json.dumps(reused.body) == json.dumps(fresh.body)
    assert check_outcome(body, "openai", PLAN, reused) == []
    for bad in ([], [1, 2], [{"role": "assistant", "content": None, "tool_calls": [{"id": "zz"}]}]):
        again = rewrite_request(body, "openai", PLAN, compacted=bad)
        assert json.dumps(again.body) == json.dumps(fresh.body)


def test_no_checkpoint_below_threshold():
    body = agent_conversation(outputs(2))
    assert checkpoint_key(body, "openai", RewritePlan(budget=100_000)) is None
    out = rewrite_request(body, "openai", RewritePlan(budget=100_000))
    assert out.body is body and out.compacted is None and out.checkpoint_key is None


def test_latest_user_in_old_part_gets_an_assistant_note():
    body = agent_conversation(outputs(12))      # only user message: the task, inside the old part
    out = rewrite_request(body, "openai", PLAN)
    assert out.checkpoint_key
    note = out.compacted[-1]
    assert note["role"] == "assistant" and note["content"].startswith(MARKER_PREFIX)
    users = [m for m in out.body["messages"] if m["role"] == "user"]
    assert users[-1] is body["messages"][1]


def test_user_note_when_the_latest_user_message_is_in_the_tail():
    body = agent_conversation(outputs(12), final_user="now run the tests")
    out = rewrite_request(body, "openai", PLAN)
    assert out.checkpoint_key and out.compacted[-1]["role"] == "user"
    assert out.body["messages"][-1] is body["messages"][-1]
    assert check_outcome(body, "openai", PLAN, out) == []


def anthropic_body(n, lines=25):
    msgs = [{"role": "user", "content": "Fix parse_value in src/pkg/values.py"}]
    for i in range(n):
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": f"t{i}", "name": "bash", "input": {"command": f"cat src/pkg/mod_{i}.py"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "\n".join(
            f"def helper_{i}_{j}(value): return value + {j}" for j in range(lines))}]})
    return {"model": "c", "max_tokens": 100, "system": "be brief", "messages": msgs}


def test_anthropic_note_is_a_text_block_in_the_first_user_turn():
    body = anthropic_body(16)
    out = rewrite_request(body, "anthropic", PLAN)
    assert out.checkpoint_key and check_outcome(body, "anthropic", PLAN, out) == []
    assert len(out.compacted) == 1
    first = out.body["messages"][0]
    assert first["role"] == "user" and first["content"][0] == {"type": "text", "text": body["messages"][0]["content"]}
    assert first["content"][-1]["type"] == "text" and first["content"][-1]["text"].startswith(MARKER_PREFIX)
    assert out.body["messages"][1]["role"] == "assistant"
    assert an.check_structure(out.body["messages"]) == []
    assert out.body["messages"][-1] is body["messages"][-1]
    grown = dict(body, messages=body["messages"] + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "tz", "name": "bash", "input": {"c": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tz", "content": "ok"}]}])
    out2 = rewrite_request(grown, "anthropic", PLAN)
    assert out2.checkpoint_key == out.checkpoint_key
    assert serialised(out2.body["messages"]).startswith(serialised(out.body["messages"]))


def test_huge_tail_falls_back_to_the_full_pipeline():
    body = agent_conversation(outputs(12))
    body = turn(body, 1, "\n".join(f"row {j} " + "x" * 60 for j in range(900)))
    body = turn(body, 2, "done")
    plan = RewritePlan(budget=4000, checkpoint_every=1500, checkpoint_target=600)
    out = rewrite_request(body, "openai", plan)
    assert out.changed and out.tokens_after <= plan.budget
    assert check_outcome(body, "openai", plan, out) == []


def test_long_tail_output_is_truncated_with_a_marker():
    body = agent_conversation(outputs(12))
    body = turn(body, 1, "\n".join(f"row {j} value={j * 3}" for j in range(400)))
    body = turn(body, 2, "done")
    plan = RewritePlan(budget=8000, checkpoint_every=1500, checkpoint_target=600)
    out = rewrite_request(body, "openai", plan)
    assert out.checkpoint_key
    cut = [m for m in out.body["messages"] if isinstance(m.get("content"), str) and "lines omitted]" in m["content"]]
    assert cut and cut[0]["content"].startswith("row 0 ")


def test_consecutive_turns_share_their_prefix_until_the_next_checkpoint():
    body = agent_conversation(outputs(10))
    plan = RewritePlan(budget=6000, checkpoint_every=2000, checkpoint_target=500)
    prev = rewrite_request(body, "openai", plan)
    stable = changed_key = 0
    for i in range(12):
        body = turn(body, i, "\n".join(f"out {i} line {j}" for j in range(12)))
        out = rewrite_request(body, "openai", plan)
        assert check_outcome(body, "openai", plan, out) == []
        if prev.checkpoint_key and out.checkpoint_key == prev.checkpoint_key:
            assert serialised(out.body["messages"]).startswith(serialised(prev.body["messages"]))
            stable += 1
        else:
            changed_key += 1
        prev = out
    assert stable >= 6 and changed_key >= 1


def test_explain_reports_compacted_messages():
    body = agent_conversation(outputs(12))
    d = explain(body, "openai", PLAN)
    json.dumps(d)
    assert any(m["action"] == "compacted" and m["tokens_after"] == 0 for m in d["messages"])
    assert len([m for m in d["messages"] if m["index"] >= 0]) == len(body["messages"])


def test_helpers():
    assert _figure_runs(["12", "13", "14", "20", "3.5", "99", "100"]) == "12-14 20 99 100 3.5"
    assert _last_error_pos("ok\nValueError: bad\nfine") == len("ok\nValue")
    assert _last_error_pos("terror") == -1
    assert _last_error_pos("a\nKeyError: x") == len("a\nKey")
    assert _last_error_pos("Error here and error there") == len("Error here and ")
