"""One digest of every body the rewrite sends for a corpus: each turn of each
conversation (the history up to an assistant message, and the whole), at
each budget, rewritten with the state the previous turn stored and without
any. Run at two commits, the same digest says a change left every byte the
same; the time it took is printed too.

    python bench/rewrite_digest.py                     # every conversation, budgets 16000 and 64000
    python bench/rewrite_digest.py --limit 12 --budgets 16000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._corpus import read_corpus  # noqa: E402
from ctxwarden.dialects import get_dialect  # noqa: E402
from ctxwarden.pipeline import RewritePlan  # noqa: E402
from ctxwarden.pipeline.conversation import conversation_keys, rewrite_turn  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "visible.jsonl"


def turn_ends(messages: list[dict]) -> list[int]:
    return [k for k in range(1, len(messages) + 1) if k == len(messages) or messages[k].get("role") == "assistant"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", default=[str(DEFAULT_CORPUS)])
    parser.add_argument("--limit", type=int, default=0, help="only the first N conversations")
    parser.add_argument("--budgets", default="16000,64000")
    args = parser.parse_args()
    conversations = read_corpus(args.files)[:args.limit or None]
    digest, bodies, started = hashlib.sha256(), 0, time.perf_counter()
    for budget in (int(b) for b in args.budgets.split(",")):
        plan = RewritePlan(budget=budget, encoding="o200k_base", pricing=get_dialect("openai").default_pricing)
        for conversation in conversations:
            messages, store = conversation["messages"], {}
            for end in turn_ends(messages):
                body = {"model": "gpt-4o", "messages": messages[:end]}
                keys = conversation_keys(body, "openai")
                state = next((store[k] for k in reversed(keys) if k in store), None)
                kept = rewrite_turn(body, "openai", plan, state, keys=keys)
                if kept.state is not None:
                    store[kept.state.key] = kept.state
                for outcome in (kept, rewrite_turn(body, "openai", plan, None)):
                    digest.update(json.dumps(outcome.body, sort_keys=True).encode())
                    bodies += 1
    print(f"{len(conversations)} conversations, budgets {args.budgets}: {bodies:,} bodies, "
          f"digest {digest.hexdigest()[:32]}, {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
