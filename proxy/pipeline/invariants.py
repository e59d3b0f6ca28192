"""The one checker of the rewrite's invariants, run on every rewrite.

``check_turn(body, sent, dialect, plan, tokens_after)`` lists what the body to
send breaks (empty when everything holds):

* it fits the budget (recounted, not trusted: only the messages sent as the
  very objects whose counts are ``known`` take those counts, by identity);
* every top-level field but ``messages`` (and the cache hints the dialect
  may add) is the client's, in its order;
* the system prompt is byte-identical, and so is the latest message the user
  wrote (what counts as either is the dialect's);
* roles and tool-call pairing are valid for the dialect.
"""

from __future__ import annotations

import json
from typing import Any

from ..dialects import get_dialect, request_tokens


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sent_tokens(sent: dict, wire, encoding: str, known: dict[int, int] | None = None) -> int:
    """``request_tokens(sent)``, with the messages whose ``id`` is in ``known``
    (objects the caller holds, already counted) taking their count from it."""
    if not known:
        return request_tokens(sent, wire, encoding)
    if not isinstance(sent.get(wire.conversation_field), list):
        return request_tokens(sent, wire, encoding)
    messages = wire.conversation(sent)
    count = known.get
    return wire.fixed_tokens(sent, encoding) + sum(
        n if (n := count(id(m))) is not None else wire.message_tokens(m, encoding) for m in messages)


def check_turn(body: dict, sent: dict, dialect: str, plan, tokens_after: int | None = None,
               known: dict[int, int] | None = None) -> list[str]:
    problems: list[str] = []
    if sent is body:
        return problems
    wire = get_dialect(dialect)
    if [k for k in sent if k not in wire.hint_fields or k in body] != list(body):
        problems.append("top-level fields changed")
    for key, value in body.items():
        if key != wire.conversation_field and sent.get(key) is not value:
            problems.append(f"top-level field {key!r} changed")
    actual = sent_tokens(sent, wire, plan.encoding, known)
    if actual > plan.budget:
        problems.append(f"over the budget: {actual} > {plan.budget} tokens")
    if tokens_after is not None and tokens_after < actual:
        problems.append(f"counted {tokens_after} tokens, the body has {actual}")
    original, messages = wire.conversation(body), wire.conversation(sent)
    if [_dumps(m) for m in wire.system_messages(original)] != [_dumps(m) for m in wire.system_messages(messages)]:
        problems.append("the system messages changed")
    if not wire.latest_user_kept(original, messages):
        problems.append("the latest user message changed")
    problems.extend(f"structure: {p}" for p in wire.check_structure(messages))
    return problems
