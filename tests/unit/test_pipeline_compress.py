import json

from proxy.pipeline.classify import classify, focus_terms
from proxy.pipeline.compress import compress, fold_text, minify_json, select_lines
from proxy.pipeline.plan import RewritePlan

from .pipeline_helpers import agent_conversation, conversation


def test_fold_text():
    assert fold_text("\x1b[31mred\x1b[0m  ok   \n\n\n\nnext") == "red ok\n\nnext"
    assert fold_text("    indented  code") == "    indented code"   # indentation kept
    assert fold_text("10%\r50%\r100%\ndone") == "100%\ndone"


def test_minify_json():
    data = {"items": [{"id": i, "name": "x"} for i in range(5)]}
    pretty = json.dumps(data, indent=2)
    small = minify_json(pretty)
    assert json.loads(small) == data and len(small) < len(pretty) and "\n" not in small
    assert minify_json("not json {") == "not json {"


def test_select_lines_head_tail_and_relevant():
    lines = [f"line {i} filler" for i in range(200)]
    lines[120] = "KeyError raised in parse_value"
    text = "\n".join(lines)
    out = select_lines(text, {"parse_value": 3.0}, "heavy")
    assert out.startswith("line 0 filler")
    assert out.endswith("line 199 filler")
    assert "KeyError raised in parse_value" in out
    assert "lines omitted]" in out
    omitted = sum(int(x.split()[1]) for x in out.split("\n") if x.startswith("[ctxwarden:"))
    kept = sum(1 for x in out.split("\n") if not x.startswith("[ctxwarden:"))
    assert omitted + kept == 200


def _classified(body, budget=10_000, **kw):
    plan = RewritePlan(budget=budget, **kw)
    msgs, _ = classify(conversation(body).messages, plan)
    return msgs, plan


def test_exact_duplicates_become_a_reference():
    big = "\n".join(f"{i}: def function_{i}(): return {i}" for i in range(60))
    outputs = [("cat a.py", big), ("echo x", "x"), ("cat a.py", big), ("echo y", "y"), ("echo z", "z")]
    msgs, plan = _classified(agent_conversation(outputs), pruning_distance=10)
    out, report = compress(msgs, plan)
    assert report["duplicates"] == 1
    assert out[3].action == "deduplicated" and "same content as in a later message" in out[3].wire["content"]
    assert out[7].wire["content"] == big           # the later copy is the one kept
    assert out[3].tokens < msgs[3].tokens


def test_near_duplicate_keeps_only_its_own_lines():
    base = [f"{i}: value_{i} = compute({i})" for i in range(40)]
    edited = list(base)
    edited[10] = "10: value_10 = compute_fixed(10)"
    outputs = [("cat b.py", "\n".join(base)), ("sed -i ...", ""), ("cat b.py", "\n".join(edited)),
               ("echo 1", "1"), ("echo 2", "2")]
    msgs, plan = _classified(agent_conversation(outputs), pruning_distance=10)
    out, report = compress(msgs, plan)
    assert report["near_duplicates"] == 1
    text = out[3].wire["content"]
    assert "nearly the same as a later message" in text
    assert "10: value_10 = compute(10)" in text     # the line the later copy lacks
    assert "20: value_20" not in text


def test_critical_messages_untouched():
    huge = "\n".join(f"row {i}" for i in range(500))
    outputs = [("ls", "x"), ("cat big", huge)]
    msgs, plan = _classified(agent_conversation(outputs))
    out, _ = compress(msgs, plan)
    assert out[-1].wire is msgs[-1].wire          # the pending result is critical


def test_long_supporting_output_truncated_with_marker():
    long_out = "\n".join(f"noise line {i}" for i in range(300))
    outputs = [("cat log", long_out)] + [(f"echo {i}", str(i)) for i in range(8)]
    msgs, plan = _classified(agent_conversation(outputs, final_user="go on"), pruning_distance=2)
    assert msgs[3].tier == "supporting"
    out, _ = compress(msgs, plan, focus_terms(msgs))
    assert out[3].action == "truncated"
    assert "lines omitted]" in out[3].wire["content"]
    assert out[3].tokens < msgs[3].tokens // 5
