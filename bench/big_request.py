"""Big requests: a ~1M-token chat body through the proxy's stages, in process,
and a 30 MB body through a real `ctxwarden serve` while another client polls
the health route.

    python bench/big_request.py                          # 1M tokens, budget 200k, then the server part
    python bench/big_request.py --tokens 1000000 --repeat 5 --no-server
    python bench/big_request.py --profile stages.prof    # cProfile of the in-process stages

The body is real agent transcripts (``../shared/corpus/visible.jsonl``) joined
end to end until it holds ``--tokens`` tokens, the system prompt of the first
only; tool call ids are renamed per copy.  The corpus holds about 2M tokens,
so a 1M-token body repeats no message; the 30 MB body (about 7M tokens)
takes each transcript several times, and every copy's texts get a line of
their own (``[copy k]``) so that no text is counted twice from the token memo.

In process (no sockets), each stage is timed on its own, ``--repeat`` times
(median and min, ms):

  parse        bytes -> JSON (``parse_chat_body``: orjson/json with the depth check)
  structure    the dialect's role order and tool-call pairing check
  keys         ``conversation_keys`` (chained SHA-256 of every message)
  count cold   ``request_tokens`` with an empty token memo
  count warm   the same again (the memo holds every text)
  first sight  ``prepare_chat`` with no state (the steps replayed), memo cold
  next turn    the next turn's body (one assistant reply and one tool result
               appended) with the state the first sight stored (the memo
               holds the first sight's texts); timed from the bytes: parse,
               keys, the state's decoding and the decision

Then the server part: the fake upstream and ``ctxwarden serve`` on loopback,
a 30 MB body posted ``--posts`` times while a second client polls
``GET /_ctxwarden/health`` every 10 ms; the health latency idle and during
the big requests.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._corpus import read_corpus  # noqa: E402
from ctxwarden.chat import parse_chat_body, prepare_chat  # noqa: E402
from ctxwarden.config import TokenManagement  # noqa: E402
from ctxwarden.dialects import openai, request_tokens  # noqa: E402
from ctxwarden.pipeline import ConversationState, conversation_keys  # noqa: E402
from ctxwarden.tokens import DEFAULT_ENCODING, clear_cache, get_encoding  # noqa: E402

CORPUS = REPO / ".." / "shared" / "corpus" / "visible.jsonl"
FALLBACK_CORPUS = Path("/work/shared/corpus/visible.jsonl")


# ------------------------------------------------------------------ the body

def _copy(message: dict, k: int, marked: bool) -> dict:
    m = dict(message)
    if m.get("tool_calls"):
        m["tool_calls"] = [{**c, "id": f"{c['id']}_{k}"} for c in m["tool_calls"]]
    if m["role"] == "tool":
        m["tool_call_id"] = f"{m['tool_call_id']}_{k}"
    if marked and isinstance(m.get("content"), str) and m["content"]:
        m["content"] = f"[copy {k}]\n{m['content']}"
    return m


def conversation(convs: list[dict], *, min_tokens: int = 0, min_bytes: int = 0) -> list[dict]:
    """Transcripts joined end to end until both minimums are met; a transcript
    taken again is marked with its copy number (distinct texts)."""
    messages: list[dict] = []
    tokens = size = 0
    k = 0
    while tokens < min_tokens or size < min_bytes:
        conv = convs[k % len(convs)]["messages"]
        marked = k >= len(convs)
        for m in conv:
            if messages and m["role"] == "system":
                continue
            m = _copy(m, k, marked)
            messages.append(m)
            tokens += openai.message_tokens(m, DEFAULT_ENCODING) if min_tokens else 0
            size += len(json.dumps(m)) if min_bytes else 0
        k += 1
    # end the request on a user turn or a tool result, as a client sends it
    while messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def next_turn(messages: list[dict], convs: list[dict]) -> list[dict]:
    """The client's next request: the assistant's reply (one call) and its result appended."""
    call = {"id": "call_next_turn", "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": "pytest -q tests/unit"})}}
    result = next(m for c in convs for m in c["messages"] if m["role"] == "tool" and len(m["content"]) > 2000)
    return messages + [{"role": "assistant", "content": "Running the unit tests again.", "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "call_next_turn", "content": result["content"]}]


def body_bytes(messages: list[dict]) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": messages}).encode()


# ------------------------------------------------------------------ in process

def timed(function, repeat: int, before=None) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def stages(raw: bytes, raw_next: bytes, tokens: TokenManagement, repeat: int) -> list[tuple[str, list[float]]]:
    pricing = openai.default_pricing
    # loaded before the first request, as the proxy's start loads them (app.Proxy.start)
    for encoding in {DEFAULT_ENCODING, *tokens.encodings()}:
        get_encoding(encoding)
    rows = []
    s, body = timed(lambda: parse_chat_body(raw, openai), repeat)
    rows.append(("parse", s))
    s, _ = timed(lambda: openai.check_structure(body["messages"]), repeat)
    rows.append(("structure", s))
    s, keys = timed(lambda: conversation_keys(body, "openai"), repeat)
    rows.append(("keys", s))
    s, _ = timed(lambda: request_tokens(body, openai, DEFAULT_ENCODING), repeat, before=clear_cache)
    rows.append(("count cold", s))
    s, _ = timed(lambda: request_tokens(body, openai, DEFAULT_ENCODING), repeat)
    rows.append(("count warm", s))
    s, chat = timed(lambda: prepare_chat(tokens, "openai", raw, body, pricing, None, keys), repeat,
                    before=clear_cache)
    rows.append(("first sight", s))
    stored = chat.state.to_bytes() if chat.state is not None else None

    def turn():
        nbody = parse_chat_body(raw_next, openai)
        nkeys = conversation_keys(nbody, "openai")
        state = ConversationState.from_bytes(stored) if stored is not None else None
        return prepare_chat(tokens, "openai", raw_next, nbody, pricing, state, nkeys)

    # the memo holds the first sight's texts, as in the proxy between turns
    s, nxt = timed(turn, repeat)
    rows.append(("next turn", s))
    rows.append(("  decision", [chat.rewrite, nxt.rewrite, chat.tokens_before, chat.tokens_after,
                                nxt.tokens_before, nxt.tokens_after]))
    return rows


def print_stages(rows) -> None:
    print(f"{'stage':<14} {'median ms':>10} {'min ms':>10}")
    for name, s in rows:
        if name == "  decision":
            print(f"decisions: first sight {s[0]} ({s[2]:,} -> {s[3]:,} tokens), "
                  f"next turn {s[1]} ({s[4]:,} -> {s[5]:,} tokens)")
            continue
        print(f"{name:<14} {1000 * statistics.median(s):10.1f} {1000 * min(s):10.1f}")
    pcs = {n: statistics.median(s) for n, s in rows if n != "  decision"}
    total = pcs["parse"] + pcs["keys"] + pcs["first sight"]
    print(f"{'total, first sight (parse + keys + decision, cold memo)':<60} {1000 * total:8.1f} ms")
    print(f"{'total, next turn (from the bytes, state known)':<60} {1000 * pcs['next turn']:8.1f} ms")


# ------------------------------------------------------------------ server

def server_part(raw: bytes, posts: int) -> None:
    from tests.servers import cli_server, free_port, proxy_config_xml, wait_for_port

    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, str(REPO / "bench" / "_serve.py"), "fake", "--port", str(fake_port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(fake_port, proc=fake)
        url = f"http://127.0.0.1:{fake_port}"
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "ctxwarden.xml"
            xml = proxy_config_xml(url, max_body_bytes=max(33554432, 2 * len(raw)), read_timeout=300)
            cfg.write_text(xml.replace("<server ", '<server workers="1" '))
            with cli_server(cfg) as (proxy, _proc):
                _health_during(proxy, raw, posts)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def _poll(client, proxy: str, stop: threading.Event, out: list[float], when: list[float] | None = None) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        client.get(proxy + "/_ctxwarden/health")
        out.append(time.perf_counter() - started)
        if when is not None:
            when.append(started)
        time.sleep(0.01)


def _health_during(proxy: str, raw: bytes, posts: int) -> None:
    import httpx

    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
    with httpx.Client(timeout=600) as big, httpx.Client(timeout=60) as small:
        small.get(proxy + "/_ctxwarden/health")
        idle: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(small, proxy, stop, idle))
        poller.start()
        time.sleep(3)
        stop.set()
        poller.join()
        during: list[float] = []
        when: list[float] = []
        post_seconds, post_started = [], []
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(small, proxy, stop, during, when))
        poller.start()
        try:
            for _ in range(posts):
                started = time.perf_counter()
                post_started.append(started)
                response = big.post(proxy + "/v1/chat/completions", content=raw, headers=headers)
                post_seconds.append(time.perf_counter() - started)
                rewrite = response.headers.get("x-ctxwarden-rewrite")
                print(f"  POST {len(raw) / 1e6:.1f} MB: {response.status_code} {rewrite} "
                      f"{response.headers.get('x-ctxwarden-tokens-before')} -> "
                      f"{response.headers.get('x-ctxwarden-tokens-after')} tokens, {post_seconds[-1]:.2f} s")
        finally:
            stop.set()
            poller.join()
    slow = sorted(zip(during, when), reverse=True)[:5]
    print("slowest health GETs during the POSTs (ms, and when: seconds after the POST started, of its length): "
          + ", ".join(f"{1000 * s:.0f} at {w - max(p for p in post_started if p <= w):.2f} of "
                      f"{post_seconds[post_started.index(max(p for p in post_started if p <= w))]:.2f}"
                      for s, w in slow if any(p <= w for p in post_started)))
    print(f"{'health GET':<28} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, s in (("idle", idle), (f"during {posts} big POSTs", during)):
        q = statistics.quantiles(s, n=100) if len(s) > 1 else s * 99
        print(f"{name:<28} {len(s):>5} {1000 * statistics.median(s):8.2f} {1000 * q[98]:8.2f} "
              f"{1000 * max(s):8.2f}")


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS if CORPUS.exists() else FALLBACK_CORPUS))
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the in-process body")
    parser.add_argument("--budget", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mb", type=float, default=30.0, help="size of the server part's body")
    parser.add_argument("--posts", type=int, default=3)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-stages", action="store_true")
    parser.add_argument("--profile", help="write cProfile stats of the in-process stages here")
    args = parser.parse_args(argv)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print("command: " + shlex.join(["bench/big_request.py", *(argv if argv is not None else sys.argv[1:])]))
    convs = read_corpus([args.corpus])
    if not args.no_stages:
        messages = conversation(convs, min_tokens=args.tokens)
        raw = body_bytes(messages)
        raw_next = body_bytes(next_turn(messages, convs))
        print(f"body: {len(messages):,} messages, {len(raw) / 1e6:.1f} MB; budget {args.budget:,}; "
              f"{args.repeat} runs per stage")
        tokens = TokenManagement(budget=args.budget)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        rows = stages(raw, raw_next, tokens, args.repeat)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        print_stages(rows)
    if not args.no_server:
        raw = body_bytes(conversation(convs, min_bytes=int(args.mb * 1e6)))
        print(f"\nserver: `ctxwarden serve` (1 worker) and the fake upstream on loopback; "
              f"body {len(raw) / 1e6:.1f} MB")
        server_part(raw, args.posts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
