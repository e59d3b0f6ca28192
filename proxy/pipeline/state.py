"""A conversation's identity and what the rewrite keeps of it between turns.

A conversation is found by the chained hash of its original messages
(:func:`conversation_keys`), one key per message boundary, so a request that
extends a known history is found with one lookup per boundary, newest first.
:class:`ConversationState` says what was sent for its latest step in terms of
those originals; it is stored per tenant in the cache backend as compact JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..dialects import get_dialect
from ..pricing import chain_bytes
from ..wirejson import canonical, compact
from .compaction import NoteEntry

VERSION = "ctxwarden-conversation/1"


# ------------------------------------------------------------------ keys

def without_markers(value: Any) -> Any:
    """``value`` without cache_control keys: clients move their breakpoints
    from turn to turn, and the conversation must still be recognised."""
    if isinstance(value, dict):
        return {k: without_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_markers(v) for v in value]
    return value


def has_markers(value: Any) -> bool:
    """Whether ``value`` holds a cache_control key anywhere."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "cache_control" in node:
                return True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return False


def _key_bytes(value: Any) -> bytes:
    data = canonical(value)
    return canonical(without_markers(value)) if b'"cache_control"' in data else data


def conversation_keys(body: dict, dialect: str) -> list[str]:
    """``keys[i]`` identifies the conversation's original ``messages[:i+1]``
    (with its model and the dialect's other fields that set it apart: system
    prompt, tools)."""
    wire = get_dialect(dialect)
    fixed = {k: body.get(k) for k in ("model", *wire.key_fields)}
    key = chain_bytes(VERSION, canonical(dialect) + _key_bytes(fixed))
    keys = []
    for message in wire.conversation(body):
        key = chain_bytes(key, _key_bytes(message))
        keys.append(key)
    return keys


# ------------------------------------------------------------------ state

# What follows the head and note: an original message's index (sent verbatim),
# [index, wire] (an original sent cut, to fit), or a message of ctxwarden's own.
Item = int | list | dict


def origin_of(item: Item) -> int | None:
    """The original message an item stands for (None: ctxwarden's own)."""
    if isinstance(item, int):
        return item
    return item[0] if isinstance(item, list) else None


@dataclass(frozen=True)
class ConversationState:
    """What was sent for a conversation's latest step, in terms of its originals."""

    key: str = ""                       # conversation_keys(body)[covered - 1]
    covered: int = 0                    # original messages covered
    head: int = 0                       # originals [0, head) pinned at the start (0: never compacted)
    note: str | None = None             # the compaction note after the head
    note_tokens: int = 0
    entries: tuple = ()                 # the note's entries, carried into the next compaction
    items: tuple = ()                   # what follows head and note
    item_tokens: tuple = ()
    original_tokens: tuple = ()         # tokens of originals [0, covered)
    compacted: int = 0                  # originals compacted so far
    ledger: tuple = (0.0, 0.0)          # estimated input cost so far: (passthrough, sent)
    failure: str = ""                   # why the latest step went out as the client sent it
    outcome: tuple = ()                 # (decision, reason, passthrough cost, sent cost) of the latest step
    plan: str = ""                      # plan_key of the plan it was made under (counts, budget, pricing)

    def to_bytes(self) -> bytes:
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data["entries"] = [e.to_json() for e in self.entries]
        return compact(data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ConversationState:
        data = json.loads(raw)
        data["entries"] = tuple(NoteEntry.from_json(e) for e in data["entries"])
        for name in ("items", "item_tokens", "original_tokens", "ledger", "outcome"):
            data[name] = tuple(data[name])
        return cls(**data)


def plan_key(plan: object) -> str:
    """A digest of a rewrite plan: a state made under another plan (a reload
    changed the budget, the pricing or the encoding its counts are in) is not
    continued but replayed."""
    return hashlib.sha256(repr(plan).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TurnOutcome:
    body: dict
    changed: bool
    decision: str              # unchanged | append | compact | passthrough | refused
    reason: str
    tokens_before: int
    tokens_after: int
    state: ConversationState | None = None
    stable_prefix: int = 0     # leading messages of body["messages"] that stay until the next compaction
    cost_sent: float = 0.0     # estimated input cost of this request (input-token units, cache priced in)
    cost_passthrough: float = 0.0
    warning: str | None = None
    explanation: tuple = field(default=(), compare=False)
