"""What bench/economy.py measures on each request: the provider's bill with its
prompt cache, prefix stability, fact retention inside original lines, and the
planted-fact probe.  Pure helpers; the replay itself is in economy.py."""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ctxwarden.pricing import Block, request_blocks
from ctxwarden.dialects import get_dialect
from ctxwarden.tokens import DEFAULT_ENCODING

ENCODING = DEFAULT_ENCODING
MIN_LINE = 20            # a retained fact must sit inside a whole original line at least this long
EPHEMERAL = {"type": "ephemeral"}

# ------------------------------------------------------------------ text and identifiers


def json_texts(value: Any) -> Iterator[str]:
    """The strings inside a JSON value (a tool call's arguments), so a multi-line
    command shows its lines instead of one escaped JSON line."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from json_texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from json_texts(v)


def content_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                yield block["text"]
            elif block.get("type") == "tool_result":
                yield from content_texts(block.get("content"))
            elif block.get("type") == "tool_use":
                yield from json_texts(block.get("input"))


def message_texts(message: Any) -> Iterator[str]:
    """A message's text in either dialect: content, tool results, tool call arguments."""
    if not isinstance(message, dict):
        return
    yield from content_texts(message.get("content"))
    for call in message.get("tool_calls") or ():
        raw = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
        try:
            yield from json_texts(json.loads(raw))
        except (TypeError, ValueError):
            if isinstance(raw, str):
                yield raw


def long_lines(texts: Iterable[str]) -> frozenset[str]:
    """The lines (stripped) of at least MIN_LINE characters."""
    return frozenset(s for text in texts for line in text.splitlines()
                     if len(s := line.strip()) >= MIN_LINE)


# What a reply reuses from its context: every alternative needs a '/', '.', '_',
# an inner capital or a digit, so plain English words never match.
IDENT_RE = re.compile(
    r"(?<![\w/.-])(?:"
    r"[\w.-]*/[\w./-]*\w"                        # paths: src/a.py, /usr/lib, ./x
    r"|[A-Za-z_]\w*(?:\.\w+)+"                   # dotted names: os.path.join, setup.py
    r"|\w*_\w+"                                  # snake_case, __init__
    r"|[A-Z][a-z0-9]+[A-Z]\w*|[a-z]+[A-Z]\w*"    # CamelCase, camelCase
    r"|\w*(?:[A-Za-z]\w*\d|\d\w*[A-Za-z])\w*"    # error codes, words with a digit: E1101, py311
    r")"
)


def identifiers(text: str) -> list[str]:
    """Distinct identifiers of ``text``, in order (3+ characters, at least one letter)."""
    found: dict[str, None] = {}
    text = re.sub(r"\\[ntr]", " ", text)   # escapes inside shell/python one-liners separate words
    for match in IDENT_RE.finditer(text):
        ident = match.group(0).rstrip(".-")
        if len(ident) < 3 or not any(c.isalpha() for c in ident):
            continue
        if "/" not in ident and "." in ident and max(map(len, ident.split("."))) < 2:
            continue   # "e.g", "i.e"
        found[ident] = None
    return list(found)


class OriginalLines:
    """The long lines of a growing original conversation, and which of them hold an
    identifier (scanned once per identifier and line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self._hits: dict[str, tuple[int, list[str]]] = {}   # ident -> (lines scanned, lines holding it)

    def add(self, lines: Iterable[str]) -> None:
        for line in lines:
            if line not in self._seen:
                self._seen.add(line)
                self.lines.append(line)

    def holding(self, ident: str) -> list[str]:
        scanned, hits = self._hits.get(ident, (0, []))
        if scanned < len(self.lines):
            bounded = re.compile(r"(?<!\w)" + re.escape(ident) + r"(?!\w)")
            hits = hits + [line for line in self.lines[scanned:] if ident in line and bounded.search(line)]
            self._hits[ident] = (len(self.lines), hits)
        return hits


def turn_facts(messages: Sequence[dict], turns: Sequence[int]) -> dict[int, dict[str, list[str]]]:
    """For each turn i: the identifiers of the original reply ``messages[i]`` that the
    request ``messages[:i]`` holds inside a long line, with those lines.  Only these
    count, so passthrough retains 100% by construction."""
    original = OriginalLines()
    out: dict[int, dict[str, list[str]]] = {}
    done = 0
    for i in turns:
        for m in messages[done:i]:
            original.add(long_lines(message_texts(m)))
        done = i
        facts = {}
        for ident in identifiers("\n".join(message_texts(messages[i]))):
            lines = original.holding(ident)
            if lines:
                facts[ident] = lines
        out[i] = facts
    return out


def retained(facts: dict[str, list[str]], sent_lines: set[str] | frozenset[str]) -> int:
    """How many facts reached the upstream inside one of their whole original lines."""
    return sum(any(line in sent_lines for line in lines) for lines in facts.values())


# ------------------------------------------------------------------ pricing a request


def strip_marks(value: Any) -> tuple[Any, bool]:
    """``value`` without cache_control keys, and whether it had any: the provider's
    cache matches content, a breakpoint only says where to write and look up."""
    if isinstance(value, dict):
        marked = "cache_control" in value
        out = {}
        for k, v in value.items():
            if k != "cache_control":
                out[k], inner = strip_marks(v)
                marked = marked or inner
        return out, marked
    if isinstance(value, list):
        pairs = [strip_marks(v) for v in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    return value, False


def _digest(value: Any) -> str:
    raw = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class MessageInfo:
    digest: str              # of the message without cache_control
    marked: bool             # carries a cache breakpoint
    tokens: int
    lines: frozenset[str]


@dataclass(frozen=True)
class Priced:
    blocks: list[Block]
    lines: frozenset[str] | set[str]

    @property
    def tokens(self) -> int:
        return self.blocks[-1].tokens


class RequestMeter:
    """Digest, tokens and lines of each message, memoised by object: the strategies
    send the same message objects turn after turn (pinned here so ids stay unique)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._memo: dict[int, tuple[Any, MessageInfo]] = {}

    def info(self, message: Any) -> MessageInfo:
        hit = self._memo.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        stripped, marked = strip_marks(message)
        info = MessageInfo(_digest(stripped), marked, get_dialect(self.dialect).message_tokens(message, ENCODING),
                           long_lines(message_texts(message)))
        self._memo[id(message)] = (message, info)
        return info

    def fixed(self, body: dict) -> MessageInfo:
        """The part before the messages (system and tools) as one block."""
        part = {"system": body.get("system"), "tools": body.get("tools")}
        stripped, marked = strip_marks(part)
        lines = long_lines(content_texts(body.get("system")))
        return MessageInfo(_digest(stripped), marked, get_dialect(self.dialect).fixed_tokens(body, ENCODING), lines)

    def price(self, body: dict, with_lines: bool = True) -> Priced:
        fixed = self.fixed(body)
        infos = [self.info(m) for m in body["messages"]]
        blocks = request_blocks(fixed.digest, fixed.tokens, [i.digest for i in infos], [i.tokens for i in infos],
                                breakpoints=[k for k, i in enumerate(infos) if i.marked],
                                fixed_breakpoint=fixed.marked)
        lines = fixed.lines.union(*(i.lines for i in infos)) if with_lines else frozenset()
        return Priced(blocks, lines)


def prefix_share(previous: Sequence[Block], current: Sequence[Block]) -> float:
    """Share of the previous request's tokens that the current one repeats as an
    identical message prefix (the fixed part counts as the first message)."""
    same = -1
    for k in range(min(len(previous), len(current))):
        if previous[k].prefix != current[k].prefix:
            break
        same = k
    total = previous[-1].tokens
    return previous[same].tokens / total if same >= 0 and total else 0.0


def with_last_breakpoint(body: dict) -> dict:
    """An Anthropic body with a cache_control breakpoint on the last block of its last
    message, as Claude Code sends it (content is always a block list here)."""
    messages = body["messages"]
    last = messages[-1]
    blocks = last["content"]
    marked = {**last, "content": [*blocks[:-1], {**blocks[-1], "cache_control": EPHEMERAL}]}
    return {**body, "messages": [*messages[:-1], marked]}


# ------------------------------------------------------------------ the planted fact

_PLANT_WORDS = ("limit", "offset", "retries", "window", "quota", "seed", "factor", "depth")


def planted_fact(conversation_id: str) -> tuple[str, str]:
    """A made-up NAME and VALUE derived from the conversation id."""
    h = hashlib.sha256(conversation_id.encode()).hexdigest()
    name = f"zq_{_PLANT_WORDS[int(h[0], 16) % len(_PLANT_WORDS)]}_{h[1:5]}"
    return name, f"qv{h[5:11]}-{h[11:15]}"


def plant(messages: list[dict], line: str) -> tuple[list[dict], int] | None:
    """``messages`` with ``line`` inside an early tool output or user message (after
    the task, within the first 10% of the conversation), and its index."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None:
        return None
    limit = max(first_user + 2, math.ceil(0.1 * len(messages)))
    for i in range(first_user + 1, min(limit, len(messages))):
        m = messages[i]
        if m["role"] in ("user", "tool") and isinstance(m.get("content"), str):
            lines = m["content"].split("\n")
            middle = len(lines) // 2
            content = "\n".join(lines[:middle] + [line] + lines[middle:])
            return messages[:i] + [{**m, "content": content}] + messages[i + 1:], i
    return None


def question(name: str) -> dict:
    return {"role": "user", "content": f"What value did {name} have earlier in this conversation?"}
