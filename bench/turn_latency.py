"""Time in the proxy for one turn of a long conversation, from the body's bytes
to the bytes sent upstream (parse, conversation keys, state lookup, rewrite,
serialisation), with the state of the previous turn known, and without it.

    python bench/turn_latency.py                       # > 100k-token conversations, budgets 16k and 64k
    python bench/turn_latency.py --min-tokens 150000 --turns 40

The corpus has no conversation above 100k tokens, so each test conversation
is real transcripts joined end to end (tool call ids renamed) until it is long
enough; the last ``--turns`` turns are timed.  No sockets: the HTTP relay's
own cost is measured by bench/overhead.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._corpus import read_corpus  # noqa: E402
from ctxwarden.chat import parse_chat_body, prepare_chat  # noqa: E402
from ctxwarden.config import TokenManagement  # noqa: E402
from ctxwarden.pipeline import ConversationState, conversation_keys  # noqa: E402
from ctxwarden.dialects import openai  # noqa: E402
from ctxwarden.tokens import DEFAULT_ENCODING  # noqa: E402

CORPUS = REPO / ".." / "shared" / "corpus" / "visible.jsonl"


def long_conversation(convs: list[dict], start: int, min_tokens: int) -> list[dict]:
    """The system prompt of one transcript, then the turns of several, joined."""
    messages: list[dict] = []
    total = 0
    k = start
    while total < min_tokens:
        conv = convs[k % len(convs)]["messages"]
        part = [m for m in conv if messages == [] or m["role"] != "system"]
        for m in part:
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "id": f"{c['id']}_{k}"} for c in m["tool_calls"]]
            if m["role"] == "tool":
                m["tool_call_id"] = f"{m['tool_call_id']}_{k}"
            messages.append(m)
            total += openai.message_tokens(m, DEFAULT_ENCODING)
        k += 1
    return messages


def timed_turns(messages: list[dict], budget: int, turns: int, keep_state: bool) -> list[float]:
    tokens = TokenManagement(budget=budget)
    pricing = openai.default_pricing
    store: dict[str, bytes] = {}
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    timed = set(ends[-turns:])
    seconds = []
    for i in ends:
        raw = json.dumps({"model": "gpt-4o", "messages": messages[:i]}).encode()
        started = time.perf_counter()
        body = parse_chat_body(raw, openai)
        keys = conversation_keys(body, "openai")
        stored = next((store[k] for k in reversed(keys[-64:]) if k in store), None) if keep_state else None
        state = ConversationState.from_bytes(stored) if stored is not None else None
        chat = prepare_chat(tokens, "openai", raw, body, pricing, state, keys)
        if chat.state is not None:
            store[chat.state.key] = chat.state.to_bytes()
        elapsed = time.perf_counter() - started
        if i in timed:
            seconds.append(elapsed)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--min-tokens", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=30, help="turns timed at the end of each conversation")
    parser.add_argument("--budgets", default="16000,64000")
    args = parser.parse_args(argv)
    convs = read_corpus([args.corpus])
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"command: bench/turn_latency.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    long = [long_conversation(convs, 7 * n, args.min_tokens) for n in range(args.conversations)]
    sizes = [sum(openai.message_tokens(m, DEFAULT_ENCODING) for m in c) for c in long]
    print(f"{len(long)} conversations of {', '.join(f'{s:,}' for s in sizes)} tokens; "
          f"last {args.turns} turns of each timed")
    print(f"{'budget':>8} {'state':>8} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    for budget in (int(b) for b in args.budgets.split(",")):
        for keep_state in (True, False):
            seconds = [s for c in long for s in timed_turns(c, budget, args.turns, keep_state)]
            q = statistics.quantiles(seconds, n=10)
            print(f"{budget:>8} {'known' if keep_state else 'none':>8} {1000 * statistics.median(seconds):8.2f} "
                  f"{1000 * q[-1]:8.2f} {1000 * max(seconds):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
