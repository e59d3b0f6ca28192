"""The internal conversation model the pipeline stages work on.

A request's message list becomes a tuple of :class:`Message`.  Each keeps the
original wire dict (``wire``) so an UNCHANGED message is emitted as the very
same object, byte for byte.  What the stages may edit is described by
``segments``: (path, text) pairs addressing plain-text leaves inside ``wire``
(for example ``("content",)`` or ``("content", 2, "text")``).  Editing copies
only the containers along those paths (see :func:`with_segments`).

Messages are grouped into *units*: a unit starts at every assistant message
(and at every system/developer message, which stands alone); the user/tool
messages that follow belong to it.  So an assistant tool call and its results
always share a unit, and dropping whole units never orphans a call or a
result nor breaks user/assistant alternation (Anthropic) as long as the input
had valid structure.
"""
from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

from ..tokens import count_message_tokens

Path = tuple  # tuple[str | int, ...]

MARKER_PREFIX = "[ctxwarden:"

TIERS = ("critical", "important", "supporting", "cache")


@dataclass(frozen=True)
class Message:
    index: int                      # position in the original list; -1 for inserted markers
    role: str                       # wire role (or "" when unknown)
    wire: Any                       # the wire message (same object when unchanged)
    tokens: int                     # tokens of ``wire`` as billed in its dialect
    dialect: str = "openai"
    text: str = ""                  # text used for scoring (content + tool-call names/args)
    segments: tuple = ()            # ((path, text), ...) editable plain-text leaves
    call_ids: tuple = ()            # tool-call ids this message makes
    result_ids: tuple = ()          # tool-call ids whose results this message carries
    opaque: bool = False            # images/documents/thinking: kept as is, never edited
    unknown: bool = False           # unknown role/shape: critical, never touched
    is_system: bool = False         # system/developer message (OpenAI)
    unit: int = -1                  # unit number
    # annotations set by the stages
    tier: str = ""
    hops: int | None = None
    action: str = "kept"
    tokens_before: int = 0


@dataclass(frozen=True)
class Conversation:
    dialect: str
    messages: tuple                 # tuple[Message, ...]
    fixed_tokens: int               # tokens outside the message list (tools, Anthropic system, priming)
    structure_ok: bool              # the input's roles/tool pairing are valid for the dialect
    latest_user: int                # original index of the latest user message, or -1
    encoding: str = ""
    units: tuple = field(default=())  # tuple[tuple[int, ...], ...] message positions per unit

    @property
    def tokens(self) -> int:
        return self.fixed_tokens + sum(m.tokens for m in self.messages)


def _set_path(obj: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    key = path[0]
    if isinstance(obj, dict):
        new = dict(obj)  # keeps key order
    else:
        new = list(obj)
    new[key] = _set_path(obj[key], path[1:], value)
    return new


def with_segments(msg: Message, texts: tuple, encoding: str, action: str) -> Message:
    """A copy of ``msg`` whose editable segments are replaced by ``texts``."""
    if len(texts) != len(msg.segments):
        raise ValueError("segment count mismatch")
    wire = msg.wire
    new_segments = []
    changed = False
    for (path, old), new in zip(msg.segments, texts):
        if new != old:
            wire = _set_path(wire, path, new)
            changed = True
        new_segments.append((path, new))
    if not changed:
        return msg
    tokens = count_message_tokens(wire, msg.dialect, encoding)
    return dataclasses.replace(
        msg,
        wire=wire,
        tokens=tokens,
        segments=tuple(new_segments),
        text="\n".join(t for _, t in new_segments),
        action=action,
    )


def assign_units(messages: list) -> list:
    """Set ``unit`` on every message; returns the list of units (tuples of positions)."""
    units: list[list[int]] = []
    current: list[int] | None = None
    current_is_system = False
    for pos, m in enumerate(messages):
        if m.is_system:
            units.append([pos])
            current = None
            current_is_system = True
            continue
        if m.role == "assistant" or current is None or current_is_system:
            current = [pos]
            units.append(current)
            current_is_system = False
        else:
            current.append(pos)
    for u, positions in enumerate(units):
        for pos in positions:
            messages[pos] = dataclasses.replace(messages[pos], unit=u)
    return [tuple(p) for p in units]


# ------------------------------------------------------------------ terms

_TERM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[./:-][A-Za-z0-9_]+)*|\d+(?:\.\d+)*")
_SPLIT_RE = re.compile(r"[./:-]")


def terms_of(text: str) -> dict:
    """Distinct terms (identifiers, their parts, numbers of 3+ digits) of a text, in
    first-seen order (a dict used as an ordered set)."""
    out: dict[str, int] = {}
    for tok in dict.fromkeys(_TERM_RE.findall(text)):
        if len(tok) < 3:
            continue
        out[tok] = 1
        if not tok[0].isdigit() and _SPLIT_RE.search(tok):
            for part in _SPLIT_RE.split(tok):
                if len(part) >= 3:
                    out[part] = 1
    return out


MEMO_TERM_CHARS = 64   # longer terms are not memoised: the cache holds at most 65536 short keys


def is_salient(term: str) -> bool:
    """Structured identifiers: paths, dotted/snake/camel names, codes, long words."""
    return _salient(term) if len(term) <= MEMO_TERM_CHARS else _is_salient(term)


def _is_salient(term: str) -> bool:
    if term[0].isdigit():
        return len(term) >= 3
    if "/" in term or "." in term or "_" in term.strip("_"):
        return len(term) >= 4
    if any(c.isdigit() for c in term):
        return True
    if any(c.isupper() for c in term[1:]) and any(c.islower() for c in term):
        return True  # camelCase / CamelCase
    return len(term) >= 8


_salient = lru_cache(maxsize=65536)(_is_salient)


def identifiers(text: str) -> tuple[str, ...]:
    """Distinct salient identifiers of a text (paths, dotted / snake / camel
    names, codes, long words), in first-seen order."""
    return tuple(term for term in terms_of(text) if is_salient(term))


def build_conversation(body: dict, dialect: str, encoding: str, parse_message, fixed_tokens: int,
                       structure_problems) -> Conversation:
    """A request body as a Conversation; the dialect supplies how to read one
    message, the tokens outside the message list and its structure check.
    Raises ValueError if the body has no message list."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("request body has no 'messages' list")
    wire_messages = body["messages"]
    messages = [parse_message(i, m, encoding) for i, m in enumerate(wire_messages)]
    units = assign_units(messages)
    latest_user = -1
    for m in messages:
        if m.role == "user":
            latest_user = m.index
    return Conversation(
        dialect=dialect,
        messages=tuple(messages),
        fixed_tokens=fixed_tokens,
        structure_ok=not structure_problems(wire_messages),
        latest_user=latest_user,
        encoding=encoding,
        units=tuple(units),
    )
