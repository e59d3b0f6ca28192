"""The proxy's memory after many large, unique chat requests.

    python bench/memory.py                      # 1,000 requests, each with a unique 256 KiB tool output
    python bench/memory.py --requests 300 --kib 1024

Each request goes the way the gateway sends it (parse, conversation keys,
state lookup in the in-process cache backend, rewrite, serialise), every one a
new conversation, so nothing can be answered from a memo.  Prints the
resident set size before, after and its peak: what stays is the caches'
ceilings (the token-count memo, 16 MiB of keys; the cache backend,
`<cache max_bytes>`), not the requests.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ctxwarden.cache import MemoryCache  # noqa: E402
from ctxwarden.caching import ResponseCache  # noqa: E402
from ctxwarden.chat import parse_chat_body, prepare_chat  # noqa: E402
from ctxwarden.config import CacheSettings, TokenManagement  # noqa: E402
from ctxwarden.heap import fix_mmap_threshold  # noqa: E402
from ctxwarden.pipeline import conversation_keys  # noqa: E402
from ctxwarden.dialects import openai  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def request(i: int, kib: int) -> bytes:
    line = f"row {i}: " + "value " * 12
    output = "\n".join(f"{line}{n}" for n in range(kib * 1024 // (len(line) + 6)))
    messages = [{"role": "system", "content": f"You are agent {i}."},
                {"role": "user", "content": f"Task {i}: read the data."},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "cat"}'}}]},
                {"role": "tool", "tool_call_id": f"c{i}", "content": output},
                {"role": "user", "content": "Summarise it."}]
    return json.dumps({"model": "gpt-4o", "messages": messages}).encode()


async def run(requests: int, kib: int, budget: int) -> None:
    settings = CacheSettings()
    cache = ResponseCache(MemoryCache(settings.max_entries, settings.ttl, settings.max_bytes), settings.ttl)
    tokens = TokenManagement(budget=budget)
    pricing = openai.default_pricing
    before = rss_mib()
    started = time.perf_counter()
    decisions: dict[str, int] = {}
    for i in range(requests):
        raw = request(i, kib)
        body = parse_chat_body(raw, openai)
        keys = conversation_keys(body, "openai")
        state = await cache.load_conversation("tenant", keys)
        chat = prepare_chat(tokens, "openai", raw, body, pricing, state, keys)
        if chat.state is not None:
            await cache.store_conversation("tenant", chat.state)
        decisions[chat.rewrite] = decisions.get(chat.rewrite, 0) + 1
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{requests} requests of {kib} KiB each, budget {budget}: {elapsed:.1f} s; decisions {decisions}")
    print(f"RSS before {before:.0f} MiB, after {rss_mib():.0f} MiB, peak {peak:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--kib", type=int, default=256)
    parser.add_argument("--budget", type=int, default=16000)
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's dynamic mmap threshold (what the proxy changes at start)")
    args = parser.parse_args(argv)
    fixed = False if args.glibc_default else fix_mmap_threshold()
    print(f"mmap threshold fixed at 128 KiB (as `ctxwarden serve` does): {fixed}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"command: bench/memory.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    asyncio.run(run(args.requests, args.kib, args.budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
