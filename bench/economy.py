"""The input bill of real agent conversations, with the provider's prompt cache priced in.

    python bench/economy.py [FILE.jsonl ...] [--budgets 16000,64000] [--split all|dev|holdout]
                            [--limit N] [--dialects openai,anthropic] [--jobs 2] [--stateless]

Default input: ../shared/corpus/visible.jsonl relative to the repository.  Every
assistant reply i of a conversation gives one request: all messages before it.
OpenAI requests are the corpus as stored; Anthropic requests are the same
messages converted (system top level, tool calls as tool_use blocks, one turn's
tool results in one user message with any user text after them, tools
declared, max_tokens set).  Four strategies, each with its own simulation of the
provider's cache per conversation (proxy/pricing.py, one turn every
TURN_SECONDS):

  passthrough  the request as is (Anthropic: one breakpoint on the last message,
               as Claude Code sends it; OpenAI caches automatically)
  window       system + task + the newest whole turns that fit the budget, cut
               anew every turn
  half         append until the budget would be exceeded, then cut once to half
               the budget (system + task + newest whole turns), append again
  ctxwarden    ctxwarden.pipeline.conversation.rewrite_turn, in process, with a
               per-conversation state store; its own cache_control marks are the
               breakpoints

Per budget, one table with the strategies side by side: bill and tokens sent as
% of passthrough, conversations billed more than 2% above passthrough and the
worst ratio, prefix stability, fact retention inside whole original lines,
over-budget turns, turns a strict upstream would reject (tests/strict_wire.py),
turns whose system prompt or latest user message changed, and the planted fact:
a line ``NAME = VALUE`` planted early in each conversation (the replay runs on
the planted conversations; one short line each), asked for at the last request
over the budget.  Then ctxwarden's decisions and time per turn.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._corpus import read_corpus  # noqa: E402
from bench._economy_metrics import (  # noqa: E402
    ENCODING, RequestMeter, planted_fact, plant, prefix_share, question, retained, strip_marks, turn_facts,
    with_last_breakpoint,
)
from ctxwarden.pipeline.conversation import conversation_keys, rewrite_turn  # noqa: E402
from ctxwarden.pipeline.plan import RewritePlan  # noqa: E402
from ctxwarden.dialects import get_dialect  # noqa: E402
from ctxwarden.pricing import PromptCache  # noqa: E402
from tests.strict_wire import chat_problems  # noqa: E402

DEFAULT_CORPUS = REPO / ".." / "shared" / "corpus" / "visible.jsonl"
STRATEGIES = ("passthrough", "window", "half", "ctxwarden")
MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5"}
MAX_TOKENS = 4096
TURN_SECONDS = 10.0          # an agent turn every 10 s: well inside the 5-minute cache TTL
LARGE_CONVERSATION = 100_000
SYSTEM_ROLES = ("system", "developer")


# ------------------------------------------------------------------ corpus


def load(paths: Sequence[str]) -> list[dict]:
    return read_corpus(paths)


def split_of(conv: dict) -> str:
    """dev or holdout by the parity of sha256(id): the rewrite is tuned on dev only,
    holdout says whether that tuning generalises."""
    digest = hashlib.sha256(str(conv.get("id", "")).encode("utf-8")).digest()
    return "dev" if digest[-1] % 2 == 0 else "holdout"


def reply_turns(messages: Sequence[dict]) -> list[int]:
    """Indexes of the assistant replies that end a request (not after another assistant message)."""
    return [i for i, m in enumerate(messages)
            if i > 0 and m["role"] == "assistant" and messages[i - 1]["role"] != "assistant"]


# ------------------------------------------------------------------ dialects


def _tool_use(call: dict) -> dict:
    fn = call["function"]
    try:
        arguments = json.loads(fn["arguments"])
    except ValueError:
        arguments = None
    data = arguments if isinstance(arguments, dict) else {"arguments": fn["arguments"]}
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": data}


def _text_block(text: Any, placeholder: str) -> dict:
    # the Messages API rejects blank text blocks
    return {"type": "text", "text": text if isinstance(text, str) and text.strip() else placeholder}


def to_anthropic(messages: Sequence[dict]) -> tuple[str | None, list[dict], list[int]]:
    """(system, messages, cut): cut[i] is how many Anthropic messages the original
    ``messages[:i]`` became.  A turn's tool results share one user message, and user
    text after them goes in it as text blocks after the tool_result blocks (what
    the API needs: the answering turn starts with every tool_result)."""
    system = [m["content"] for m in messages if m["role"] in SYSTEM_ROLES]
    out: list[dict] = []
    cut: list[int] = []
    answering = False     # out[-1] is a user message that answers tool calls
    for m in messages:
        cut.append(len(out))
        role = m["role"]
        if role in SYSTEM_ROLES:
            continue
        if role == "assistant":
            blocks = [{"type": "text", "text": m["content"]}] if (m.get("content") or "").strip() else []
            blocks += [_tool_use(c) for c in m.get("tool_calls") or ()]
            out.append({"role": "assistant", "content": blocks or [_text_block("", "(no content)")]})
            answering = False
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m.get("content") or ""}
            if answering:
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            answering = True
        elif answering:
            out[-1]["content"].append(_text_block(m.get("content"), "(empty)"))
        else:
            out.append({"role": "user", "content": [_text_block(m.get("content"), "(empty)")]})
    cut.append(len(out))
    return ("\n\n".join(system) if system else None), out, cut


def anthropic_tools(messages: Sequence[dict]) -> list[dict]:
    """Tool declarations for the tools the conversation calls, as a real client sends them."""
    schemas: dict[str, dict] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            use = _tool_use(call)
            props = schemas.setdefault(use["name"], {})
            for key, value in use["input"].items():
                props[key] = {"type": "string" if isinstance(value, str) else "number"}
    return [{"name": name, "description": f"Run {name}.",
             "input_schema": {"type": "object", "properties": props}} for name, props in sorted(schemas.items())]


@dataclass
class Dialected:
    """One conversation in one dialect: the request before original message i is
    ``{**base, "messages": messages[:cut[i]]}``."""

    dialect: str
    base: dict
    messages: list[dict]
    cut: list[int]

    @classmethod
    def of(cls, messages: list[dict], dialect: str) -> Dialected:
        if dialect == "openai":
            return cls(dialect, {"model": MODELS[dialect]}, messages, list(range(len(messages) + 1)))
        system, converted, cut = to_anthropic(messages)
        base: dict = {"model": MODELS[dialect], "max_tokens": MAX_TOKENS}
        if system is not None:
            base["system"] = system
        tools = anthropic_tools(messages)
        if tools:
            base["tools"] = tools
        return cls(dialect, base, converted, cut)

    def request(self, i: int) -> dict:
        return self._as_sent({**self.base, "messages": self.messages[: self.cut[i]]})

    def probe(self, originals: list[dict]) -> dict:
        """A request made of other original messages, in this dialect."""
        return self._as_sent({**self.base, "messages": Dialected.of(originals, self.dialect).messages})

    def _as_sent(self, body: dict) -> dict:
        # an Anthropic client marks its last message (Claude Code does): every strategy gets that body
        return with_last_breakpoint(body) if self.dialect == "anthropic" else body


# ------------------------------------------------------------------ strategies


def answers_previous(message: dict) -> bool:
    """A tool result: it stays with the call it answers."""
    if message["role"] == "tool":
        return True
    content = message.get("content")
    return message["role"] == "user" and isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def recent_window(messages: Sequence[dict], tokens: Sequence[int], room: int) -> list[int]:
    """System messages + the task (first user message) + the newest whole turns within
    ``room`` tokens; the newest turn always, even when it alone is too big."""
    pinned = [k for k, m in enumerate(messages) if m["role"] in SYSTEM_ROLES]
    task = next((k for k, m in enumerate(messages) if m["role"] == "user"), None)
    pinned += [task] if task is not None else []
    units: list[list[int]] = []
    for k, m in enumerate(messages):
        if k in pinned:
            continue
        if answers_previous(m) and units and units[-1][-1] == k - 1:
            units[-1].append(k)
        else:
            units.append([k])
    used = sum(tokens[k] for k in pinned)
    chosen: list[int] = []
    for unit in reversed(units):
        cost = sum(tokens[k] for k in unit)
        if chosen and used + cost > room:
            break
        used += cost
        chosen = unit + chosen
    return sorted(pinned + chosen)


class Strategy:
    name = ""

    def __init__(self, dialect: str, budget: int, meter: RequestMeter) -> None:
        self.dialect, self.budget, self.meter = dialect, budget, meter

    def send(self, body: dict) -> dict:
        raise NotImplementedError

    def fork(self) -> Strategy:
        """An independent copy for a probe request that must not change this one's state."""
        return copy.copy(self)

    @staticmethod
    def _finish(body: dict, kept: Sequence[int]) -> dict:
        # the last message is always kept, with the client's breakpoint on it (Anthropic)
        return {**body, "messages": [body["messages"][k] for k in kept]}

    def _room_and_tokens(self, body: dict) -> tuple[int, list[int]]:
        room = self.budget - self.meter.fixed(body).tokens
        return room, [self.meter.info(m).tokens for m in body["messages"]]


class Passthrough(Strategy):
    name = "passthrough"

    def send(self, body: dict) -> dict:
        return body


class Window(Strategy):
    name = "window"

    def send(self, body: dict) -> dict:
        room, tokens = self._room_and_tokens(body)
        return self._finish(body, recent_window(body["messages"], tokens, room))


class Half(Strategy):
    name = "half"

    def __init__(self, dialect: str, budget: int, meter: RequestMeter) -> None:
        super().__init__(dialect, budget, meter)
        self.kept: list[int] = []     # indexes of the request's messages sent last turn
        self.end = 0                  # messages the last request had

    def send(self, body: dict) -> dict:
        room, tokens = self._room_and_tokens(body)
        kept = self.kept + list(range(self.end, len(tokens)))
        if sum(tokens[k] for k in kept) > room:
            kept = recent_window(body["messages"], tokens, room // 2)
        self.kept, self.end = kept, len(tokens)
        return self._finish(body, kept)

    def fork(self) -> Strategy:
        twin = copy.copy(self)
        twin.kept = list(self.kept)
        return twin


@dataclass
class EngineTurn:
    decision: str
    ms: float
    known_state: bool
    stateless_differs: bool | None


class Ctxwarden(Strategy):
    name = "ctxwarden"

    def __init__(self, dialect: str, budget: int, meter: RequestMeter, stateless: bool = False) -> None:
        super().__init__(dialect, budget, meter)
        self.plan = RewritePlan(budget=budget, encoding=ENCODING, pricing=get_dialect(dialect).default_pricing)
        self.store: dict[str, Any] = {}
        self.stateless = stateless
        self.last: EngineTurn | None = None

    def send(self, body: dict) -> dict:
        # what the proxy does between receiving the body and sending upstream: find the state, rewrite
        start = time.perf_counter()
        keys = conversation_keys(body, self.dialect)
        state = next((self.store[k] for k in reversed(keys) if k in self.store), None)
        outcome = rewrite_turn(body, self.dialect, self.plan, state, keys=keys)
        ms = 1000 * (time.perf_counter() - start)
        if outcome.state is not None:
            self.store[outcome.state.key] = outcome.state
        differs = None
        if self.stateless:
            alone = rewrite_turn(body, self.dialect, self.plan, None)
            differs = json.dumps(alone.body, sort_keys=True) != json.dumps(outcome.body, sort_keys=True)
        self.last = EngineTurn(outcome.decision, ms, state is not None, differs)
        return outcome.body

    def fork(self) -> Strategy:
        twin = copy.copy(self)
        twin.store, twin.stateless = dict(self.store), False   # states are frozen: a shallow copy isolates
        return twin


def make_strategies(dialect: str, budget: int, meter: RequestMeter, stateless: bool) -> list[Strategy]:
    return [Passthrough(dialect, budget, meter), Window(dialect, budget, meter), Half(dialect, budget, meter),
            Ctxwarden(dialect, budget, meter, stateless)]


# ------------------------------------------------------------------ figures


@dataclass
class Stats:
    turns: int = 0
    cost: float = 0.0
    tokens: int = 0
    stability: float = 0.0
    stability_n: int = 0
    facts_kept: int = 0
    facts: int = 0
    over: int = 0
    invalid: int = 0
    touched: int = 0
    planted_found: int = 0
    planted_asked: int = 0
    conv_costs: dict[str, float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    decisions: Counter = field(default_factory=Counter)
    ms_known: list[float] = field(default_factory=list)
    ms_large: list[float] = field(default_factory=list)
    stateless_turns: int = 0
    stateless_differ: int = 0

    def merge(self, other: Stats) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, dict) and not isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, list):
                mine.extend(value)
            else:
                setattr(self, name, mine + value)


def final_turn(messages: Sequence[dict]) -> list[Any]:
    """The content of the trailing messages of the last message's role, as blocks: the
    Messages API combines consecutive same-role messages into one turn."""
    blocks: list[Any] = []
    for m in reversed(messages):
        if m["role"] != messages[-1]["role"]:
            break
        content = m["content"]
        blocks[:0] = [{"type": "text", "text": content}] if isinstance(content, str) else content
    return [strip_marks(b)[0] for b in blocks]


def untouched(original: dict, sent: dict, dialect: str) -> bool:
    """System prompt and latest user message (when it is plain text) reached the upstream
    byte for byte, cache_control marks aside.  Anthropic: the user's blocks end the
    final user turn (a recall block joined before them in the same turn is allowed)."""
    if strip_marks(original.get("system"))[0] != strip_marks(sent.get("system"))[0]:
        return False
    before, after = original["messages"], sent["messages"]
    for k, m in enumerate(before):
        if m["role"] not in SYSTEM_ROLES:
            break
        if k >= len(after) or after[k] != m:
            return False
    last = before[-1]
    if last["role"] != "user" or answers_previous(last):
        return True
    if dialect == "anthropic":
        mine = final_turn([last])
        theirs = final_turn(after) if after[-1]["role"] == "user" else []
        return theirs[len(theirs) - len(mine):] == mine
    return strip_marks(after[-1])[0] == strip_marks(last)[0]


def ask_turn(turns: Sequence[int], request_tokens: dict[int, int], budget: int,
             planted_at: int | None) -> int | None:
    """The last request over the budget (a rewrite must have compacted by then), if after the plant."""
    over = [i for i in turns if request_tokens[i] > budget]
    return over[-1] if over and planted_at is not None and over[-1] > planted_at else None


class Track:
    """One strategy's replay of one conversation: its provider cache and its figures."""

    def __init__(self, strategy: Strategy, conv_id: str, large: bool) -> None:
        self.strategy, self.conv_id, self.large = strategy, conv_id, large
        self.stats = Stats()
        self.cache = PromptCache(get_dialect(strategy.dialect).default_pricing)
        self.previous: list | None = None    # blocks of the previous request

    def probe(self, body: dict, line: str) -> None:
        """Send a planted-fact question through a copy of the strategy; count whether the line reached."""
        sent = self.strategy.fork().send(body)
        self.stats.planted_asked += 1
        self.stats.planted_found += line in self.strategy.meter.price(sent).lines

    def turn(self, t: int, i: int, body: dict, facts: dict[str, list[str]]) -> None:
        s, st = self.strategy, self.stats
        sent = s.send(body)
        priced = s.meter.price(sent)
        bill = self.cache.bill(priced.blocks, now=t * TURN_SECONDS)
        st.turns += 1
        st.cost += bill.cost
        st.tokens += priced.tokens
        st.conv_costs[self.conv_id] = st.conv_costs.get(self.conv_id, 0.0) + bill.cost
        if self.previous is not None:
            st.stability += prefix_share(self.previous, priced.blocks)
            st.stability_n += 1
        self.previous = priced.blocks
        st.facts += len(facts)
        st.facts_kept += retained(facts, priced.lines)
        st.over += priced.tokens > s.budget
        problems = chat_problems(s.dialect, sent)
        st.invalid += bool(problems)
        if problems and len(st.examples) < 3:
            st.examples.append(f"{self.conv_id} before message {i}: {problems[0]}")
        st.touched += not untouched(body, sent, s.dialect)
        if isinstance(s, Ctxwarden) and s.last is not None:
            self._engine(s.last)

    def _engine(self, last: EngineTurn) -> None:
        st = self.stats
        st.decisions[last.decision] += 1
        if last.known_state:
            st.ms_known.append(last.ms)
            if self.large:
                st.ms_large.append(last.ms)
        if last.stateless_differs is not None:
            st.stateless_turns += 1
            st.stateless_differ += last.stateless_differs


def replay(conv: dict, budgets: Sequence[int], dialects: Sequence[str], stateless: bool) -> dict[tuple, Stats]:
    """Every figure of one conversation, keyed (dialect, budget, strategy)."""
    conv_id = str(conv.get("id"))
    name, value = planted_fact(conv_id)
    line = f"{name} = {value}"
    planted = plant(conv["messages"], line)
    messages, planted_at = planted if planted else (conv["messages"], None)
    turns = reply_turns(messages)
    facts = turn_facts(messages, turns)     # the same original lines in both dialects
    out: dict[tuple, Stats] = {}
    for dialect in dialects:
        conv_d = Dialected.of(messages, dialect)
        meter = RequestMeter(dialect)
        running = [meter.fixed(conv_d.base).tokens]
        for m in conv_d.messages:
            running.append(running[-1] + meter.info(m).tokens)
        request_tokens = {i: running[conv_d.cut[i]] for i in turns}
        for budget in budgets:
            tracks = [Track(s, conv_id, running[-1] > LARGE_CONVERSATION)
                      for s in make_strategies(dialect, budget, meter, stateless)]
            asked = ask_turn(turns, request_tokens, budget, planted_at)
            for t, i in enumerate(turns):
                if i == asked:
                    probe = conv_d.probe(messages[:i] + [question(name)])
                    for track in tracks:
                        track.probe(probe, line)
                body = conv_d.request(i)
                for track in tracks:
                    track.turn(t, i, body, facts[i])
            out.update({(dialect, budget, tr.strategy.name): tr.stats for tr in tracks})
    return out


# ------------------------------------------------------------------ report


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}" if b else "-"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dearer(st: Stats, base: Stats) -> tuple[int, int, float]:
    """(conversations billed more than 2% above passthrough, conversations, worst ratio)."""
    ratios = [st.conv_costs[c] / base.conv_costs[c] for c in base.conv_costs if base.conv_costs[c]]
    return sum(r > 1.02 for r in ratios), len(ratios), max(ratios, default=0.0)


def table_rows(stats: dict[str, Stats]) -> list[tuple[str, list[str]]]:
    base = stats["passthrough"]
    rows: list[tuple[str, Any]] = [
        ("turns", lambda s: str(s.turns)),
        ("bill % of passthrough", lambda s: pct(s.cost, base.cost)),
        ("conversations >2% dearer", lambda s: "{}/{}".format(*dearer(s, base)[:2])),
        ("worst conversation bill ratio", lambda s: f"{dearer(s, base)[2]:.3f}"),
        ("tokens sent % of passthrough", lambda s: pct(s.tokens, base.tokens)),
        ("prefix stability %", lambda s: pct(s.stability, s.stability_n)),
        ("fact retention %", lambda s: pct(s.facts_kept, s.facts)),
        ("over budget turns", lambda s: str(s.over)),
        ("invalid turns (strict upstream)", lambda s: str(s.invalid)),
        ("system/latest user changed", lambda s: str(s.touched)),
        ("planted fact found/asked", lambda s: f"{s.planted_found}/{s.planted_asked}"),
    ]
    return [(label, [fmt(stats[name]) for name in STRATEGIES]) for label, fmt in rows]


def timing(values: Sequence[float]) -> str:
    if not values:
        return "no turns"
    return (f"p50 {statistics.median(values):.2f} ms, p90 {percentile(values, 0.9):.2f} ms "
            f"(n={len(values)})")


def report(results: dict[tuple, Stats], budgets: Sequence[int], dialects: Sequence[str],
           facts_note: str) -> None:
    for budget in budgets:
        print(f"\nbudget {budget:,} tokens")
        print(f"{'':10} {'':32}" + "".join(f"{name:>12}" for name in STRATEGIES))
        for dialect in dialects:
            stats = {name: results[(dialect, budget, name)] for name in STRATEGIES}
            for k, (label, cells) in enumerate(table_rows(stats)):
                print(f"{dialect if k == 0 else '':10} {label:32}" + "".join(f"{c:>12}" for c in cells))
            engine = stats["ctxwarden"]
            decisions = ", ".join(f"{d} {n}" for d, n in sorted(engine.decisions.items()))
            print(f"{'':10} ctxwarden decisions: {decisions}")
            print(f"{'':10} ctxwarden time per turn with known state: {timing(engine.ms_known)}; "
                  f"in conversations above {LARGE_CONVERSATION:,} tokens: {timing(engine.ms_large)}")
            if engine.stateless_turns:
                print(f"{'':10} stateless replay: {engine.stateless_differ} of {engine.stateless_turns} "
                      "turns differ from the stateful run")
            for name in STRATEGIES:
                for example in stats[name].examples:
                    print(f"{'':10} invalid ({name}): {example}")
    print("\n" + facts_note)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=f"JSONL corpus files (default {DEFAULT_CORPUS})")
    ap.add_argument("--budgets", default="16000,64000")
    ap.add_argument("--split", choices=("all", "dev", "holdout"), default="all")
    ap.add_argument("--limit", type=int, default=0, help="only the first N conversations")
    ap.add_argument("--dialects", default="openai,anthropic")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--stateless", action="store_true",
                    help="also rewrite every turn without state and count the bodies that differ")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    dialects = [d for d in args.dialects.split(",") if d]
    paths = args.files or [str(DEFAULT_CORPUS)]
    convs = load(paths)
    if args.split != "all":
        convs = [c for c in convs if split_of(c) == args.split]
    if args.limit:
        convs = convs[: args.limit]
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)")
    print("command: " + shlex.join(sys.argv if argv is None else ["bench/economy.py", *argv]))
    print(f"corpus: {', '.join(paths)}; split {args.split}; {len(convs)} conversations; "
          f"{args.jobs} processes; encoding {ENCODING}")
    for d in dialects:
        p = get_dialect(d).default_pricing
        print(f"pricing {d}: cache {p.cache}, read {p.read}x, write {p.write}x, ttl {p.ttl:.0f} s; "
              f"one turn every {TURN_SECONDS:.0f} s")
    started = time.perf_counter()
    work = partial(replay, budgets=budgets, dialects=dialects, stateless=args.stateless)
    ordered = sorted(convs, key=lambda c: -len(json.dumps(c["messages"])))   # biggest first: even workers
    results: dict[tuple, Stats] = {}
    with Pool(args.jobs) if args.jobs > 1 else _Serial() as pool:
        for partial_result in pool.imap_unordered(work, ordered):
            for key, st in partial_result.items():
                results.setdefault(key, Stats()).merge(st)
    report(results, budgets, dialects,
           "fact retention: identifiers (paths, dotted names, snake_case, CamelCase/camelCase, codes, words "
           "with a digit) of the next original reply that the original request holds inside a whole line of "
           "20+ characters, counted retained when one of those lines reached the upstream verbatim.\n"
           "prefix stability: mean share of the previous request's tokens repeated as an identical message "
           "prefix by the next.  Planted fact: asked at the last request over the budget.")
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    return 0


class _Serial:
    """Pool stand-in for --jobs 1 (profiling, debugging)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap_unordered(self, fn: Any, items: Sequence[Any]) -> Any:
        return map(fn, items)


if __name__ == "__main__":
    raise SystemExit(main())
