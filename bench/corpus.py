"""Run the rewrite pipeline over real agent transcripts and print what it achieves.

    python bench/corpus.py [FILE.jsonl ...] [--budgets 8000,16000,32000] [--limit N] [--sample K]
                           [--split dev|holdout|all] [--every E] [--target C]

Default input: ../shared/corpus/visible.jsonl relative to the repository.
Every turn prefix (the messages before an assistant reply) above
``compression_threshold * budget`` tokens becomes one request.  Per budget it
prints: requests, tokens before/after (total and median reduction), rewrite
time (median, max, tokens/s), invariant violations, and fact retention: of the
identifiers and figures the NEXT assistant reply mentions that also occur in
the original request, the share still present in the rewritten request,
beside the same for a naive recent window (system prompt + latest user
message, then the most recent messages that fit, tool calls with their
results) cut to the same number of tokens.  Prefix stability: for every
request whose previous turn-prefix is also above the threshold, the share of
the rewritten request's tokens (messages serialised in order) that is a
byte-identical prefix of the previous turn's rewritten request (median), for
ctxwarden and for the recent window.  ``--split`` picks conversations by the
parity of sha256(conversation id): develop on ``dev``, report ``holdout`` too.
Finally it times one synthetic 200k-token request.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from proxy.pipeline import RewritePlan, rewrite_request  # noqa: E402
from proxy.pipeline.invariants import check_outcome  # noqa: E402
from proxy.tokens import clear_cache, count_message_tokens, count_request_tokens, count_text  # noqa: E402

DEFAULT_CORPUS = REPO / ".." / "shared" / "corpus" / "visible.jsonl"

FACT_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:[./:-][A-Za-z0-9_]+)+"   # paths, dotted names, a.b:c
    r"|\b[A-Za-z][a-z0-9]*_[A-Za-z0-9_]+\b"             # snake_case
    r"|\b[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*\b"             # CamelCase
    r"|\b[a-z]+[A-Z][A-Za-z0-9]*\b"                     # camelCase
    r"|\b[A-Z]{1,5}-?\d{2,}\b"                          # error codes
    r"|\b\d+(?:\.\d+)?\b"                               # figures
)


def message_text(m) -> str:
    if not isinstance(m, dict):
        return json.dumps(m)
    parts = []
    c = m.get("content")
    if isinstance(c, str):
        parts.append(c)
    elif isinstance(c, list):
        for p in c:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
    for call in m.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(str(fn.get("name", "")))
        parts.append(str(fn.get("arguments", "")))
    return "\n".join(parts)


def facts_of(text: str) -> list:
    out = {}
    for f in FACT_RE.findall(text):
        if f.isdigit() and len(f) < 2:
            continue
        out[f] = None
    return list(out)


def present(fact: str, text: str) -> bool:
    start = 0
    n = len(fact)
    while True:
        i = text.find(fact, start)
        if i < 0:
            return False
        before = text[i - 1] if i > 0 else " "
        after = text[i + n] if i + n < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = i + 1


def recent_window(messages: list, target: int) -> list:
    """System + latest user message, then the most recent units that fit in ``target`` tokens."""
    lu = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    required = {i for i, m in enumerate(messages) if m.get("role") in ("system", "developer")}
    if lu >= 0:
        required.add(lu)
    used = 3 + sum(count_message_tokens(messages[i], "openai") for i in required)
    units: list[list[int]] = []
    for i, m in enumerate(messages):
        if i in required:
            continue
        if m.get("role") in ("tool", "function") and units and messages[units[-1][0]].get("role") == "assistant":
            units[-1].append(i)
        else:
            units.append([i])
    chosen = set(required)
    for unit in reversed(units):
        t = sum(count_message_tokens(messages[i], "openai") for i in unit)
        if used + t > target:
            break
        used += t
        chosen.update(unit)
    return [messages[i] for i in sorted(chosen)]


def load(paths: list) -> list:
    convs = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    convs.append(json.loads(line))
    return convs


def split_of(conv: dict) -> str:
    """dev or holdout, by the parity of sha256(conversation id)."""
    digest = hashlib.sha256(str(conv.get("id", "")).encode("utf-8")).digest()
    return "dev" if digest[-1] % 2 == 0 else "holdout"


def all_requests(conv: dict, threshold: float) -> list:
    msgs = conv["messages"]
    counts = [count_message_tokens(m, "openai") for m in msgs]
    out = []
    total = 3
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant" and total > threshold:
            out.append(i)
        total += counts[i]
    return out


def requests_for(conv: dict, threshold: float, sample: int, rng: random.Random) -> list:
    out = all_requests(conv, threshold)
    if sample and len(out) > sample:
        out = sorted(rng.sample(out, sample))
    return out


def serialised(messages: list) -> str:
    return "".join(json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in messages)


def prefix_share(current: list, previous: list) -> float:
    """Share of ``current``'s tokens (messages serialised in order) that is a byte-identical
    prefix of ``previous``."""
    a, b = serialised(current), serialised(previous)
    n = min(len(a), len(b))
    lo = 0
    # common prefix length (compare message by message first, then characters)
    step = 4096
    while lo < n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    hi = min(lo + step, n)
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    total = count_text(a)
    return count_text(a[:lo]) / total if total else 1.0


def pct(a: float, b: float) -> float:
    return 100.0 * a / b if b else 0.0


def run_budget(convs: list, budget: int, sample: int, seed: int, every=None, target=None) -> dict:
    plan = RewritePlan(budget=budget, checkpoint_every=every, checkpoint_target=target)
    rng = random.Random(seed)
    stab, win_stab = [], []
    n = 0
    before_total = after_total = 0
    reductions, times = [], []
    violations = 0
    violation_examples = []
    kept_facts = window_facts = all_facts = 0
    per_req_ret, per_req_win = [], []
    warnings = refused = 0
    for conv in convs:
        msgs = conv["messages"]
        every_turn = all_requests(conv, plan.threshold_tokens)
        previous_of = {b: a for a, b in zip(every_turn, every_turn[1:])}
        for i in requests_for(conv, plan.threshold_tokens, sample, rng):
            body = {"model": "bench", "messages": msgs[:i]}
            t0 = time.perf_counter()
            out = rewrite_request(body, "openai", plan)
            dt = time.perf_counter() - t0
            problems = check_outcome(body, "openai", plan, out)
            again = rewrite_request(body, "openai", plan)
            if json.dumps(again.body) != json.dumps(out.body):
                problems.append("not deterministic")
            if problems:
                violations += 1
                if len(violation_examples) < 5:
                    violation_examples.append((conv.get("id"), i, problems[:3]))
            warnings += out.warning is not None
            refused += out.refused is not None
            n += 1
            times.append(dt)
            before_total += out.tokens_before
            after_total += out.tokens_after
            reductions.append(1 - out.tokens_after / out.tokens_before)
            j = previous_of.get(i)
            if j is not None:
                prev = rewrite_request({"model": "bench", "messages": msgs[:j]}, "openai", plan)
                stab.append(prefix_share(out.body["messages"], prev.body["messages"]))
                win_stab.append(prefix_share(recent_window(msgs[:i], out.tokens_after),
                                             recent_window(msgs[:j], prev.tokens_after)))
            # fact retention
            original_text = "\n".join(message_text(m) for m in msgs[:i])
            facts = [f for f in facts_of(message_text(msgs[i])) if present(f, original_text)]
            if not facts:
                continue
            rewritten_text = "\n".join(message_text(m) for m in out.body["messages"])
            window = recent_window(msgs[:i], out.tokens_after)
            window_text = "\n".join(message_text(m) for m in window)
            k = sum(present(f, rewritten_text) for f in facts)
            w = sum(present(f, window_text) for f in facts)
            kept_facts += k
            window_facts += w
            all_facts += len(facts)
            per_req_ret.append(k / len(facts))
            per_req_win.append(w / len(facts))
    return {
        "budget": budget, "requests": n, "before": before_total, "after": after_total,
        "reduction_total": pct(before_total - after_total, before_total),
        "reduction_median": 100 * statistics.median(reductions) if reductions else 0.0,
        "time_median_ms": 1000 * statistics.median(times) if times else 0.0,
        "time_max_ms": 1000 * max(times) if times else 0.0,
        "tokens_per_s": before_total / sum(times) if times else 0.0,
        "violations": violations, "violation_examples": violation_examples,
        "warnings": warnings, "refused": refused,
        "facts": all_facts,
        "retention": pct(kept_facts, all_facts), "window_retention": pct(window_facts, all_facts),
        "retention_mean": 100 * statistics.mean(per_req_ret) if per_req_ret else 0.0,
        "window_retention_mean": 100 * statistics.mean(per_req_win) if per_req_win else 0.0,
        "stability": 100 * statistics.median(stab) if stab else 0.0,
        "window_stability": 100 * statistics.median(win_stab) if win_stab else 0.0,
        "stability_mean": 100 * statistics.mean(stab) if stab else 0.0,
        "pairs": len(stab),
    }


def synthetic_request(target_tokens: int = 200_000, seed: int = 7) -> dict:
    """A deterministic agent-style conversation of about ``target_tokens`` tokens."""
    rng = random.Random(seed)
    words = ("alpha beta gamma delta parse render token budget value error index config handler "
             "request response module import return class def self None True False").split()
    files = [f"src/pkg/mod_{i}.py" for i in range(40)]
    msgs = [{"role": "system", "content": "You are a coding agent. Use the bash tool."},
            {"role": "user", "content": "Fix the bug in src/pkg/mod_3.py where parse_value raises KeyError."}]
    total = count_request_tokens({"messages": msgs}, "openai")
    k = 0
    while total < target_tokens:
        k += 1
        f = rng.choice(files)
        call_id = f"call_{k:05d}"
        kind = k % 4
        if kind == 0:
            lines = [f"{j:6d}\tdef func_{rng.randint(0, 999)}(x):  # " + " ".join(rng.choice(words) for _ in range(8))
                     for j in range(1, 160)]
            out = "\n".join(lines)
            cmd = f"nl -ba {f} | sed -n '1,160p'"
        elif kind == 1:
            out = json.dumps({"items": [{"id": j, "name": rng.choice(words), "ok": bool(j % 2)}
                                        for j in range(60)]}, indent=2)
            cmd = "curl -s localhost:8000/api/items"
        elif kind == 2:
            out = "\n".join(f"\x1b[32mPASSED\x1b[0m tests/test_{rng.choice(words)}.py::test_{j}   "
                            for j in range(120))
            cmd = "pytest -q"
        else:
            out = "Traceback (most recent call last):\n" + "\n".join(
                f'  File "{rng.choice(files)}", line {rng.randint(1, 400)}, in {rng.choice(words)}'
                for _ in range(30)) + "\nKeyError: 'value'"
            cmd = f"python {f}"
        a = {"role": "assistant", "content": f"Let me look at {f}.",
             "tool_calls": [{"id": call_id, "type": "function",
                             "function": {"name": "bash", "arguments": json.dumps({"command": cmd})}}]}
        t = {"role": "tool", "tool_call_id": call_id, "content": out}
        msgs += [a, t]
        total += count_message_tokens(a, "openai") + count_message_tokens(t, "openai")
    return {"model": "bench", "messages": msgs}


def time_synthetic(budget: int = 16000) -> dict:
    body = synthetic_request()
    plan = RewritePlan(budget=budget)
    clear_cache()
    t0 = time.perf_counter()
    cold = rewrite_request(body, "openai", plan)
    cold_s = time.perf_counter() - t0
    # one more turn on top: what a proxy sees on the next request of this conversation
    grown = {"model": "bench", "messages": body["messages"] + [
        {"role": "assistant", "content": "Now run the tests.", "tool_calls": [{"id": "call_x", "type": "function",
         "function": {"name": "bash", "arguments": "{\"command\":\"pytest -q\"}"}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "3 failed, 120 passed"}]}
    t0 = time.perf_counter()
    warm = rewrite_request(grown, "openai", plan)
    warm_s = time.perf_counter() - t0
    problems = check_outcome(grown, "openai", plan, warm) + check_outcome(body, "openai", plan, cold)
    return {"tokens": cold.tokens_before, "after": warm.tokens_after, "cold_ms": 1000 * cold_s,
            "warm_ms": 1000 * warm_s, "violations": len(problems)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=f"JSONL corpus files (default {DEFAULT_CORPUS})")
    ap.add_argument("--budgets", default="8000,16000,32000")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N conversations")
    ap.add_argument("--sample", type=int, default=0,
                    help="at most K requests per conversation and budget (seeded random pick)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--split", choices=("dev", "holdout", "all"), default="all",
                    help="conversations by sha256(id) parity; develop on dev only")
    ap.add_argument("--every", type=int, default=None, help="checkpoint every E tokens (default budget/2; 0 off)")
    ap.add_argument("--target", type=int, default=None, help="checkpoint target C tokens (default budget/8)")
    args = ap.parse_args(argv)
    paths = args.files or [str(DEFAULT_CORPUS)]
    convs = load(paths)
    if args.split != "all":
        convs = [c for c in convs if split_of(c) == args.split]
    if args.limit:
        convs = convs[: args.limit]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    print(f"corpus: {', '.join(paths)}  split: {args.split}  conversations: {len(convs)}"
          f"{'  sample/conv: ' + str(args.sample) if args.sample else ''}")
    rows = [run_budget(convs, b, args.sample, args.seed, args.every, args.target) for b in budgets]
    header = (f"{'budget':>7} {'reqs':>5} {'tok before':>11} {'tok after':>10} {'red tot':>7} {'red med':>7} "
              f"{'ms med':>7} {'ms max':>7} {'ktok/s':>7} {'viol':>4} {'warn':>4} "
              f"{'facts':>6} {'retain':>7} {'window':>7} {'ret/req':>7} {'win/req':>7} "
              f"{'stab':>6} {'w stab':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['budget']:>7} {r['requests']:>5} {r['before']:>11,} {r['after']:>10,} "
              f"{r['reduction_total']:>6.1f}% {r['reduction_median']:>6.1f}% "
              f"{r['time_median_ms']:>7.1f} {r['time_max_ms']:>7.1f} {r['tokens_per_s'] / 1000:>7.0f} "
              f"{r['violations']:>4} {r['warnings']:>4} {r['facts']:>6} "
              f"{r['retention']:>6.1f}% {r['window_retention']:>6.1f}% "
              f"{r['retention_mean']:>6.1f}% {r['window_retention_mean']:>6.1f}% "
              f"{r['stability']:>5.1f}% {r['window_stability']:>5.1f}%")
    for r in rows:
        for ex in r["violation_examples"]:
            print("violation:", r["budget"], ex)
    print("retain/window: pooled share of next-reply facts (present in the original request) still present; "
          "window = recent window cut to the rewrite's size; ret/req, win/req: mean per request;\n"
          "stab / w stab: median share of a rewritten request's tokens that is a byte-identical prefix of the "
          "previous turn's rewrite (ctxwarden / recent window)")
    if not args.no_synthetic:
        s = time_synthetic()
        print(f"synthetic request: {s['tokens']:,} tokens -> {s['after']:,} at 16k budget; "
              f"cold (empty count cache) {s['cold_ms']:.0f} ms; next turn (warm cache) {s['warm_ms']:.0f} ms; "
              f"violations {s['violations']}")
    return 0 if all(r["violations"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
