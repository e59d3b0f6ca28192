"""What do ctxwarden's response cache and stable-prefix rewrite achieve?

    python bench/cache.py                      # 6 conversations, budget 16000 (a few minutes)
    python bench/cache.py --quick              # smoke run: 2 conversations
    python bench/cache.py --conversations 10 --budget 32000 --corpus other.jsonl
    python bench/cache.py --token-xml '<checkpoint every="6000" target="3000"/>'

Starts the fake upstream (tests/fake_upstream.py, with its request recorder
readable over HTTP: bench/_cache_helpers.py) and the proxy in front of it as
separate processes on 127.0.0.1 (uvicorn, one worker each, uvloop +
httptools). The proxy's config is the tests' config (the design's seed block,
memory cache with its defaults) with ``<budget>`` set to ``--budget``. It then
replays real agent conversations (``--corpus``, default
../shared/corpus/visible.jsonl; OpenAI chat format, one conversation per line)
turn by turn: turn k of a conversation is the request a client would have sent
for its k-th assistant reply: ``{"model": "gpt-4o-mini", "temperature": 0,
"messages": <every message before that reply>}``. The conversations are a
deterministic sample: sorted by sha256 of their id, the two sources taken in
turn, the first ``--conversations`` (default 6; ``--quick``: 2). Only loopback
is used; the run stops by itself (``--timeout``, default 900 s).

Sections, each printed as a table:

1. Hit rate. Pass 1 replays every turn of every sampled conversation once,
   pass 2 replays the same requests again in the same order. Hit rate = share
   of responses with ``x-ctxwarden-cache: hit``; upstream calls = requests the
   fake upstream recorded during the pass. Expected: ~0% then 100%. Pass 2's
   answers are checked to be the pass-1 answers (same id).
2. Latency of a miss (pass 1) and of a hit (pass 2), p50 and p99 (nearest
   rank), measured at the client (httpx, one keep-alive connection, request
   sent to response fully read), split into small requests (at or below the
   rewrite threshold ``compression_threshold x budget``, sent unchanged) and
   large ones (above it, rewritten); beside them the p50 of the proxy's own
   rewrite time for those requests (``ms_rewrite`` of its request log, one
   JSON line per request as ``ctxwarden serve`` writes it). A hit still
   parses, counts and rewrites the request (the key is over the rewritten
   body); a miss here costs only the fake's ~1 ms, so the miss-hit gap is a
   floor on what a hit saves against a real model, which takes seconds.
3. Coalescing: 50 concurrent identical cacheable requests (a fresh prompt
   with a unique marker) while the fake upstream takes 0.5 s to answer
   (``x-fake-delay: 0.5``): upstream calls made (from the fake's recorder;
   target exactly 1), how the 50 were answered, and whether all 50 bodies
   are identical. Once as JSON, once streamed (SSE), and once with
   ``Cache-Control: no-store`` as the uncached baseline (50 calls).
4. Prefix stability. For every turn that has a previous turn in its
   conversation: the share of the request's tokens that is a byte-identical
   prefix of the previous turn's request. Requests are their messages
   serialised as compact JSON (what the proxy sends), one by one; the prefix
   is the run of identical leading messages plus the common leading bytes of
   the first message that differs ("whole msgs" counts only the identical
   messages). Tokens: ctxwarden.tokens.count_text (cl100k_base) of each
   serialised message. Compared, on the same turns:
   - raw: the original requests (pass-through; only the new suffix differs),
   - naive window: system messages + the latest user message + the most
     recent messages that fit ``--budget`` (tool calls kept with their
     results),
   - ctxwarden: the requests the fake upstream actually received in pass 1
     (rewritten, or passed through below the threshold).
   Medians over all turns, and over the turns where this and the previous
   request are both above the rewrite threshold (where the rewrite can move
   the prefix), with the mean, the 10th percentile and the share of those
   turns where less than half the request is a prefix of the previous one.
   A turn's new messages are never a prefix, so a smaller request has a lower
   ceiling: raw's ceiling is ~99%, a 7k-token rewrite's ~95%. Target:
   ctxwarden's median over turns above the threshold >= 90%.
5. Estimated input bill with Anthropic's published prompt-cache prices, for
   the replayed turns of all conversations in replay order: base input price
   P per token, cache read 0.1 x P, cache write 1.25 x P (5-minute cache).
   Assumed: the provider caches every prefix of every request sent before
   (an idealised cache: a breakpoint after every message and inside the
   first differing one, no TTL expiry, no 1024-token minimum, shared across
   conversations), so each request reads the longest previously sent prefix
   at 0.1 x P and writes the rest at 1.25 x P. Printed in P x Mtok (the
   cost of that many million tokens at the base price) for raw, the naive
   window and ctxwarden, with and without the prompt cache, and relative to
   raw without caching. Token counts as in section 4, so the figures compare
   strategies; they are not a provider's exact count.

The machine is shared: the latency figures include whatever else ran; the
header line prints the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench._corpus import read_corpus  # noqa: E402
from bench.overhead import stop  # noqa: E402

from bench._cache_helpers import (  # noqa: E402
    PromptCache, Request, Tokens, naive_window, percentile, prefix_tokens,
)
from tests.servers import free_port, proxy_config_xml, wait_for_port  # noqa: E402

HOST = "127.0.0.1"
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "visible.jsonl"
HELPERS = ROOT / "bench" / "_cache_helpers.py"
MODEL = "gpt-4o-mini"
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-cache"}
CACHE_READ, CACHE_WRITE = 0.1, 1.25
EXAMPLE_PRICE = ("Claude Sonnet 4.5", 3.0)  # $ per Mtok base input (list price)


# --------------------------------------------------------------------------- corpus


def load_corpus(path: Path) -> list[dict]:
    return read_corpus([path])


def sample(convs: list[dict], k: int) -> list[dict]:
    """Sorted by sha256(id); sources taken in turn (round robin); the first k."""
    def digest(c: dict) -> str:
        return hashlib.sha256(str(c.get("id", "")).encode()).hexdigest()

    by_source: dict[str, list[dict]] = {}
    for c in sorted(convs, key=digest):
        by_source.setdefault(str(c.get("source", "")), []).append(c)
    queues = [by_source[s] for s in sorted(by_source, key=lambda s: digest(by_source[s][0]))]
    out: list[dict] = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


@dataclass
class Turn:
    conv: int             # index of the conversation in the sample
    index: int            # the assistant reply's position in the conversation
    messages: list        # the messages before it (the original request)
    body: bytes
    # filled by the replay
    tokens_before: int = 0
    rewrite: str = ""
    results: list = field(default_factory=list)   # per pass: (status, seconds, cache, answer id)
    received: list | None = None                   # messages the upstream received (pass 1)


def turns_of(convs: list[dict]) -> list[Turn]:
    out = []
    for c, conv in enumerate(convs):
        msgs = conv["messages"]
        for i, m in enumerate(msgs):
            if m.get("role") == "assistant" and i > 0:
                body = {"model": MODEL, "temperature": 0, "messages": msgs[:i]}
                out.append(Turn(c, i, msgs[:i], json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()))
    return out


# --------------------------------------------------------------------------- processes


def start(cmd: list[str], port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_for_port(port, timeout=60, proc=proc)
    except Exception:
        proc.kill()
        proc.wait(timeout=5)
        log.flush()
        log.seek(0)
        raise SystemExit(f"could not start {' '.join(cmd)}:\n{log.read()[-4000:].decode(errors='replace')}")
    return proc


def take(client: httpx.Client, fake: str) -> list[dict]:
    """Requests the fake upstream recorded since the last take."""
    r = client.post(f"{fake}/_bench/take")
    r.raise_for_status()
    return r.json()["requests"]


# --------------------------------------------------------------------------- sections 1-2


def warm_up(client: httpx.Client, proxy: str, budget: int) -> None:
    """Load the encoding and the pipeline in the proxy, uncached (no-store)."""
    filler = " ".join(f"word{i % 97} value_{i} path/to/file_{i % 13}.py" for i in range(budget // 6))
    msgs = [{"role": "system", "content": "warm-up"}]
    for j in range(6):
        msgs += [{"role": "user", "content": f"step {j}: {filler}"}, {"role": "assistant", "content": f"ok {j}"}]
    msgs.append({"role": "user", "content": "done?"})
    for body in ({"model": MODEL, "temperature": 0, "messages": msgs[-2:]},
                 {"model": MODEL, "temperature": 0, "messages": msgs}):
        for _ in range(3):
            client.post(f"{proxy}/v1/chat/completions", json=body, headers={**HEADERS, "cache-control": "no-store"})


def replay(client: httpx.Client, proxy: str, turns: list[Turn]) -> float:
    url = f"{proxy}/v1/chat/completions"
    t_pass = time.perf_counter()
    for t in turns:
        t0 = time.perf_counter()
        r = client.post(url, content=t.body, headers=HEADERS)
        dt = time.perf_counter() - t0
        answer_id = ""
        if r.status_code == 200:
            try:
                answer_id = r.json().get("id", "")
            except ValueError:
                pass
        if not t.results:
            t.tokens_before = int(r.headers.get("x-ctxwarden-tokens-before", "0") or 0)
            t.rewrite = r.headers.get("x-ctxwarden-rewrite", "")
        t.results.append((r.status_code, dt, r.headers.get("x-ctxwarden-cache", "?"), answer_id))
    return time.perf_counter() - t_pass


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def print_hit_rates(turns: list[Turn], walls: list[float], upstream_calls: list[int]) -> None:
    print("\n1. Hit rate on a repeated replay (every turn of every conversation, in order, twice)")
    hdr = f"{'pass':>5}  {'requests':>8}  {'hits':>5}  {'misses':>6}  {'other':>5}  {'hit rate':>8}  " \
          f"{'upstream calls':>14}  {'errors':>6}  {'wall s':>7}"
    print(hdr)
    print("-" * len(hdr))
    for p in range(2):
        cache = Counter(t.results[p][2] for t in turns)
        errors = sum(t.results[p][0] != 200 for t in turns)
        n = len(turns)
        print(f"{p + 1:>5}  {n:>8}  {cache['hit']:>5}  {cache['miss']:>6}  {n - cache['hit'] - cache['miss']:>5}  "
              f"{100 * cache['hit'] / n:>7.1f}%  {upstream_calls[p]:>14}  {errors:>6}  {walls[p]:>7.1f}")
    same = sum(t.results[0][3] == t.results[1][3] and t.results[0][3] != "" for t in turns)
    print(f"pass-2 answers identical to pass 1 (same answer id): {same}/{len(turns)}")


def read_request_log(path: Path, start: int, end: int) -> list[dict]:
    """The proxy's request-log lines for chat requests between two file offsets."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    lines = []
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("logger") == "ctxwarden.request" and line.get("path") == "/v1/chat/completions":
            lines.append(line)
    return lines


def print_latency(turns: list[Turn], threshold: float, log_lines: list[dict]) -> None:
    print("\n2. Latency of a miss (pass 1) vs a hit (pass 2), ms")
    print(f"   small = at or below the rewrite threshold ({threshold:.0f} tokens: sent unchanged); "
          "large = above it (rewritten)")
    print("   client: request sent to response read (httpx, keep-alive); "
          "rewrite: the proxy's own ms_rewrite for the request (parse, count, rewrite; its request log)")
    hdr = (f"{'requests':<20} {'n':>4} {'tokens':>6} | {'miss p50':>8} {'p99':>6} {'rewrite':>7} | "
           f"{'hit p50':>7} {'p99':>6} {'rewrite':>7} | {'hit/miss p50':>12}")
    print(hdr)
    print("-" * len(hdr))
    groups = [("all", lambda tok: True),
              ("small (<= threshold)", lambda tok: tok <= threshold),
              ("large (> threshold)", lambda tok: tok > threshold)]
    for name, keep in groups:
        group = [t for t in turns if keep(t.tokens_before)]
        if not group:
            continue
        miss = [t.results[0][1] for t in group if t.results[0][2] == "miss"]
        hit = [t.results[1][1] for t in group if t.results[1][2] == "hit"]
        rw_miss = [line["ms_rewrite"] / 1000 for line in log_lines
                   if line.get("cache") == "miss" and keep(line.get("tokens_before", 0))]
        rw_hit = [line["ms_rewrite"] / 1000 for line in log_lines
                  if line.get("cache") == "hit" and keep(line.get("tokens_before", 0))]
        tok = statistics.median(t.tokens_before for t in group)
        m50, h50 = percentile(miss, 50), percentile(hit, 50)
        print(f"{name:<20} {len(group):>4} {tok / 1000:>5.1f}k | {ms(m50):>8} {ms(percentile(miss, 99)):>6} "
              f"{ms(percentile(rw_miss, 50)):>7} | {ms(h50):>7} {ms(percentile(hit, 99)):>6} "
              f"{ms(percentile(rw_hit, 50)):>7} | {h50 / m50 if m50 else float('nan'):>11.2f}x")
    print("   (tokens: median request size; rewrite: p50; a hit is looked up by the rewritten body, "
          "so it pays the rewrite too)")


# --------------------------------------------------------------------------- section 3


async def burst(proxy: str, fake: str, *, n: int, delay: float, stream: bool, cache_control: str | None) -> dict:
    marker = f"coalesce-{uuid.uuid4().hex}"
    body = {"model": MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": f"Benchmark {marker}: say hello in five words."}]}
    if stream:
        body["stream"] = True
    headers = {**HEADERS, "x-fake-delay": f"{delay:g}"}
    if cache_control:
        headers["cache-control"] = cache_control
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        # open the n connections first, so the burst is n requests on open connections
        await asyncio.gather(*(client.get(f"{proxy}/_ctxwarden/health") for _ in range(n)))
        await client.post(f"{fake}/_bench/take")

        async def one():
            r = await client.post(f"{proxy}/v1/chat/completions", json=body, headers=headers)
            return (r.status_code, r.headers.get("x-ctxwarden-cache", "?"),
                    r.headers.get("x-ctxwarden-coalesced") == "1", r.content)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
        recorded = (await client.post(f"{fake}/_bench/take")).json()["requests"]
    calls = sum(marker in r["body"] for r in recorded)
    kinds = Counter(("coalesced" if co else cache) for _, cache, co, _ in results)
    return {"calls": calls, "wall": wall, "ok": sum(s == 200 for s, *_ in results), "kinds": kinds,
            "distinct": len({c for *_, c in results})}


def coalescing(proxy: str, fake: str, n: int = 50, delay: float = 0.5) -> list[tuple[str, dict]]:
    rows = []
    for name, stream, cc in (("JSON, cache on", False, None), ("SSE stream, cache on", True, None),
                             ("JSON, Cache-Control: no-store", False, "no-store")):
        rows.append((name, asyncio.run(burst(proxy, fake, n=n, delay=delay, stream=stream, cache_control=cc))))
    return rows


def print_coalescing(rows: list[tuple[str, dict]], n: int, delay: float) -> None:
    print(f"\n3. Coalescing: {n} concurrent identical requests, fake upstream answering in {delay:g} s")
    hdr = f"{'requests':<30} {'upstream calls':>14}  {'200 OK':>6}  {'wall s':>6}  {'identical bodies':>16}  answered as"
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["kinds"].items()))
        ident = "yes" if r["distinct"] == 1 else f"no ({r['distinct']} distinct)"
        print(f"{name:<30} {r['calls']:>14}  {r['ok']:>6}  {r['wall']:>6.2f}  {ident:>16}  {kinds}")
    print("   (coalesced = followed the identical request in flight: x-ctxwarden-coalesced: 1)")


# --------------------------------------------------------------------------- sections 4-5


@dataclass
class Strategy:
    name: str
    requests: list[Request]   # one per turn, in replay order


def build_strategies(turns: list[Turn], budget: int, count: Tokens) -> list[Strategy]:
    interned: dict[str, str] = {}
    raw = [Request(t.messages, count, interned) for t in turns]
    window = [Request(naive_window(t.messages, budget), count, interned) for t in turns]
    ours = [Request(t.received if t.received is not None else t.messages, count, interned) for t in turns]
    return [Strategy("raw pass-through", raw), Strategy("naive sliding window", window),
            Strategy("ctxwarden", ours)]


def print_stability(turns: list[Turn], strategies: list[Strategy], threshold: float, count: Tokens,
                    budget: int) -> float:
    pairs = [k for k in range(1, len(turns)) if turns[k].conv == turns[k - 1].conv]
    large = [k for k in pairs if turns[k].tokens_before > threshold and turns[k - 1].tokens_before > threshold]
    print(f"\n4. Prefix stability at budget {budget}: share of a request's tokens that is a byte-identical prefix "
          "of the previous turn's request")
    print(f"   {len(pairs)} turns with a previous turn; {len(large)} of them with this and the previous request "
          f"above the rewrite threshold ({threshold:.0f} tokens)")
    hdr = (f"{'requests sent':<22} {'median all':>10}  {'median >thr':>11}  {'mean >thr':>9}  {'p10 >thr':>8}  "
           f"{'<50% >thr':>9}  {'whole msgs >thr':>15}  {'mean tokens >thr':>16}")
    print(hdr)
    print("-" * len(hdr))
    ours_median = float("nan")
    for s in strategies:
        def share(k: int, partial: bool = True) -> float:
            cur, prev = s.requests[k], s.requests[k - 1]
            return prefix_tokens(cur, prev, count, partial) / cur.total if cur.total else 1.0

        all_shares = [share(k) for k in pairs]
        large_shares = [share(k) for k in large]
        whole = [share(k, partial=False) for k in large]
        med_all = 100 * statistics.median(all_shares) if all_shares else float("nan")
        med_large = 100 * statistics.median(large_shares) if large_shares else float("nan")
        mean_large = 100 * statistics.mean(large_shares) if large_shares else float("nan")
        p10 = 100 * percentile(large_shares, 10)
        whole_med = 100 * statistics.median(whole) if whole else float("nan")
        mean_tok = statistics.mean(s.requests[k].total for k in large) if large else float("nan")
        broken = 100 * sum(x < 0.5 for x in large_shares) / len(large_shares) if large_shares else float("nan")
        print(f"{s.name:<22} {med_all:>9.1f}%  {med_large:>10.1f}%  {mean_large:>8.1f}%  {p10:>7.1f}%  "
              f"{broken:>8.1f}%  {whole_med:>14.1f}%  {mean_tok:>16,.0f}")
        if s.name == "ctxwarden":
            ours_median = med_large
    print("   (>thr: over the turns above the threshold; <50%: share of those turns where less than half the "
          "request is a prefix of the previous one;\n    whole msgs: median counting identical leading messages "
          "only; tokens: serialised JSON messages, cl100k_base)")
    return ours_median


def print_bill(strategies: list[Strategy], count: Tokens) -> None:
    print(f"\n5. Estimated input bill, Anthropic prompt-cache prices (read {CACHE_READ:g} x P, write "
          f"{CACHE_WRITE:g} x P), all replayed turns, in P x Mtok")
    rows = []
    for s in strategies:
        cache = PromptCache(count)
        cached = written = 0
        for req in s.requests:
            c, w = cache.send(req)
            cached += c
            written += w
        total = cached + written
        rows.append((s.name, total, cached, total, CACHE_READ * cached + CACHE_WRITE * written))
    base = rows[0][3]
    hdr = (f"{'requests sent':<22} {'Mtok sent':>9}  {'read from cache':>15}  {'no cache':>8} {'vs raw':>7}  "
           f"{'prompt cache':>12} {'vs raw':>7}")
    print(hdr)
    print("-" * len(hdr))
    for name, total, cached, nocache, withcache in rows:
        print(f"{name:<22} {total / 1e6:>9.3f}  {100 * cached / total if total else 0:>14.1f}%  "
              f"{nocache / 1e6:>8.3f} {100 * nocache / base:>6.1f}%  {withcache / 1e6:>12.3f} "
              f"{100 * withcache / base:>6.1f}%")
    label, price = EXAMPLE_PRICE
    print(f"   ('vs raw': relative to raw pass-through without a prompt cache. At P = ${price:g}/Mtok ({label} "
          f"list price): raw ${base / 1e6 * price:,.2f} uncached, "
          + ", ".join(f"{name} ${wc / 1e6 * price:,.2f}" for name, *_, wc in rows) + " with the prompt cache)")


# --------------------------------------------------------------------------- main


def config_xml(fake_url: str, port: int, budget: int, token_xml: str) -> str:
    xml = proxy_config_xml(fake_url, port=port)
    xml = xml.replace("<budget>200000</budget>", f"<budget>{budget}</budget>{token_xml}", 1)
    assert f"<budget>{budget}</budget>" in xml, "tests.servers.proxy_config_xml changed shape"
    return xml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL of conversations")
    parser.add_argument("--conversations", type=int, default=None, help="how many (default 6; --quick: 2)")
    parser.add_argument("--budget", type=int, default=16000, help="the proxy's token budget (default 16000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 conversations")
    parser.add_argument("--token-xml", default="",
                        help="extra XML inside <token_management>, e.g. '<checkpoint every=\"6000\"/>'")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = parser.parse_args(argv)
    k = args.conversations or (2 if args.quick else 6)

    convs = sample(load_corpus(args.corpus), k)
    if not convs:
        raise SystemExit(f"no conversations in {args.corpus}")
    turns = turns_of(convs)
    threshold = 0.7 * args.budget  # the seed's compression_threshold
    if "<compression_threshold>0.7</compression_threshold>" not in proxy_config_xml("http://x"):
        raise SystemExit("tests.servers.proxy_config_xml no longer sets compression_threshold 0.7")

    def on_alarm(signum, frame):
        raise TimeoutError(f"bench/cache.py gave up after {args.timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout))

    fake_port, proxy_port = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix="ctxwarden-bench-cache-")
    cfg = Path(tmp.name) / "bench.xml"
    cfg.write_text(config_xml(f"http://{HOST}:{fake_port}", proxy_port, args.budget, args.token_xml))
    fake_log = open(Path(tmp.name) / "fake.log", "w+b")
    proxy_log_path = Path(tmp.name) / "proxy.log"
    proxy_log = open(proxy_log_path, "w+b")
    load = os.getloadavg()[0]
    fake = start([sys.executable, str(HELPERS), "fake", "--port", str(fake_port)], fake_port, fake_log)
    proxy = None
    fake_url, proxy_url = f"http://{HOST}:{fake_port}", f"http://{HOST}:{proxy_port}"
    try:
        proxy = start([sys.executable, str(HELPERS), "proxy", "--port", str(proxy_port), "--config", str(cfg)],
                      proxy_port, proxy_log)
        with httpx.Client(timeout=120) as client:
            warm_up(client, proxy_url, args.budget)
            take(client, fake_url)
            walls, upstream_calls = [], []
            received_by_sha: dict[str, list] = {}
            time.sleep(0.3)  # let the warm-up's request-log lines reach the file
            log_start = os.path.getsize(proxy_log_path)
            for _ in range(2):
                walls.append(replay(client, proxy_url, turns))
                recorded = [r for r in take(client, fake_url) if r["path"] == "/v1/chat/completions"]
                upstream_calls.append(len(recorded))
                for r in recorded:
                    received_by_sha[hashlib.sha256(r["body"].encode()).hexdigest()[:24]] = \
                        json.loads(r["body"])["messages"]
            missing = 0
            for t in turns:
                answer_id = t.results[0][3]
                t.received = received_by_sha.get(answer_id.removeprefix("chatcmpl-"))
                missing += t.received is None
            received_by_sha.clear()
            time.sleep(0.3)
            log_lines = read_request_log(proxy_log_path, log_start, os.path.getsize(proxy_log_path))
        bursts = coalescing(proxy_url, fake_url)
    finally:
        signal.alarm(0)
        if proxy is not None:
            stop(proxy)
        stop(fake)
        for log in (fake_log, proxy_log):
            log.close()
        tmp.cleanup()

    sizes = [t.tokens_before for t in turns]
    print()
    print(f"ctxwarden cache benchmark: corpus {args.corpus}, {len(convs)} conversations, {len(turns)} turns "
          f"(request tokens median {statistics.median(sizes):,.0f}, max {max(sizes):,}); budget {args.budget}, "
          f"rewrite threshold {threshold:.0f}{' ' + args.token_xml if args.token_xml else ''}")
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} at the start; fake upstream and proxy: one uvicorn "
          "worker each, separate processes on loopback")
    for c in convs:
        n = sum(1 for t in turns if t.conv == convs.index(c))
        print(f"  {c.get('id')}  ({c.get('agent', '')}; {n} turns)")
    rewrites = Counter(t.rewrite for t in turns)
    print("rewrite decisions (pass 1, x-ctxwarden-rewrite): "
          + ", ".join(f"{v} {k}" for k, v in sorted(rewrites.items())))

    print_hit_rates(turns, walls, upstream_calls)
    print_latency(turns, threshold, log_lines)
    print_coalescing(bursts, 50, 0.5)
    count = Tokens()
    if missing:
        print(f"\n!! {missing} turns: the request the upstream received could not be found; "
              "the original request is used for them")
    strategies = build_strategies(turns, args.budget, count)
    stability = print_stability(turns, strategies, threshold, count, args.budget)
    print_bill(strategies, count)

    hit2 = sum(t.results[1][2] == "hit" for t in turns) / len(turns)
    errors = sum(r[0] != 200 for t in turns for r in t.results)
    print("\ntargets:")
    checks = [
        ("pass 2 hit rate 100%", hit2 == 1.0),
        ("coalescing: 50 concurrent identical requests make exactly 1 upstream call (JSON and SSE)",
         all(r["calls"] == 1 for name, r in bursts if "cache on" in name)),
        ("ctxwarden prefix stability, median over turns above the threshold >= 90%", stability >= 90.0),
        ("no request failed", errors == 0),
    ]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    return 0 if errors == 0 and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
