"""Anthropic Messages wire format <-> internal conversation.

``system`` is top level (string or text blocks) and is never changed.  Messages
are ``user`` / ``assistant`` and must alternate; content is a string or a list
of blocks: text (editable), image / document (kept as is), tool_use (assistant),
tool_result (user; its string content or text blocks are editable), thinking /
redacted_thinking (the whole message is then never edited).  A tool_use must be
answered by a tool_result in the very next user message.  Unknown roles or
block types mark the message ``unknown``: critical, never edited or dropped.
"""
from __future__ import annotations

import json
from typing import Any

from ..pipeline.model import Conversation, Message, build_conversation, render_messages
from ..tokens import DEFAULT_ENCODING, anthropic_fixed_tokens, count_message_tokens

DIALECT = "anthropic"
ROLES = frozenset({"user", "assistant"})
OPAQUE_BLOCKS = frozenset({"image", "document"})
FROZEN_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _tool_result_content(i: int, block: dict, segments: list, texts: list) -> tuple[bool, bool]:
    """Collect editable text of a tool_result; returns (opaque, unknown)."""
    content = block.get("content")
    opaque = unknown = False
    if content is None:
        return opaque, unknown
    if isinstance(content, str):
        segments.append((("content", i, "content"), content))
        texts.append(content)
    elif isinstance(content, list):
        for j, inner in enumerate(content):
            if not isinstance(inner, dict):
                unknown = True
            elif inner.get("type") == "text" and isinstance(inner.get("text"), str):
                segments.append((("content", i, "content", j, "text"), inner["text"]))
                texts.append(inner["text"])
            elif inner.get("type") in OPAQUE_BLOCKS:
                opaque = True
            else:
                unknown = True
    else:
        unknown = True
    return opaque, unknown


def _message(index: int, wire: Any, encoding: str) -> Message:
    tokens = count_message_tokens(wire, DIALECT, encoding)
    if not isinstance(wire, dict) or wire.get("role") not in ROLES:
        role = wire.get("role") if isinstance(wire, dict) and isinstance(wire.get("role"), str) else ""
        return Message(index=index, role=role, wire=wire, tokens=tokens, dialect=DIALECT,
                       unknown=True, tokens_before=tokens)
    role = wire["role"]
    segments: list = []
    texts: list[str] = []
    call_ids: list[str] = []
    result_ids: list[str] = []
    opaque = unknown = frozen = False
    content = wire.get("content")
    if isinstance(content, str):
        segments.append((("content",), content))
        texts.append(content)
    elif isinstance(content, list):
        for i, block in enumerate(content):
            if not isinstance(block, dict):
                unknown = True
                continue
            btype = block.get("type")
            if btype == "text" and isinstance(block.get("text"), str):
                segments.append((("content", i, "text"), block["text"]))
                texts.append(block["text"])
            elif btype == "tool_use" and role == "assistant" and isinstance(block.get("id"), str):
                call_ids.append(block["id"])
                try:
                    args = json.dumps(block.get("input"), ensure_ascii=False, sort_keys=True)
                except (TypeError, ValueError):
                    args = str(block.get("input"))
                texts.append(f"{block.get('name', '')} {args}")
            elif btype == "tool_result" and role == "user" and isinstance(block.get("tool_use_id"), str):
                result_ids.append(block["tool_use_id"])
                o, u = _tool_result_content(i, block, segments, texts)
                opaque = opaque or o
                unknown = unknown or u
            elif btype in OPAQUE_BLOCKS:
                opaque = True
            elif btype in FROZEN_BLOCKS:
                opaque = frozen = True
            else:
                unknown = True
    else:
        unknown = True
    if unknown or frozen:
        segments = []
    return Message(
        index=index, role=role, wire=wire, tokens=tokens, dialect=DIALECT,
        text="\n".join(texts), segments=tuple(segments), call_ids=tuple(call_ids),
        result_ids=tuple(result_ids), opaque=opaque, unknown=unknown, tokens_before=tokens,
    )


def to_conversation(body: dict, encoding: str = DEFAULT_ENCODING) -> Conversation:
    """Parse a Messages request body. Raises ValueError if it has no message list."""
    fixed = anthropic_fixed_tokens(body, encoding) if isinstance(body, dict) else 0
    return build_conversation(body, DIALECT, encoding, _message, fixed, check_structure)


def render(body: dict, messages) -> dict:
    """A new request body: every top-level field kept, new ``messages``."""
    return render_messages(body, messages)


def make_marker(text: str, role: str) -> dict:
    return {"role": role, "content": text}


def marker_role(prev_role: str | None, next_role: str | None) -> str | None:
    """Role for an omission marker between two kept messages, or None.

    Only where a marker keeps alternation valid: between two messages of the
    same role (which then need one) or before a leading assistant message.
    """
    if prev_role is None:
        return "user" if next_role == "assistant" else None
    if next_role is None:
        return None
    if prev_role == next_role:
        return "assistant" if prev_role == "user" else "user"
    return None


def _tool_uses(m: dict) -> list:
    c = m.get("content")
    if not isinstance(c, list):
        return []
    return [b.get("id") for b in c if isinstance(b, dict) and b.get("type") == "tool_use"]


def _tool_results(m: dict) -> list:
    c = m.get("content")
    if not isinstance(c, list):
        return []
    return [b.get("tool_use_id") for b in c if isinstance(b, dict) and b.get("type") == "tool_result"]


def check_structure(messages: Any) -> list[str]:
    """Problems with alternation / tool_use pairing (empty list: valid)."""
    if not isinstance(messages, list):
        return ["messages is not a list"]
    problems: list[str] = []
    prev = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            problems.append(f"message {i}: unknown role or shape")
            prev = None
            continue
        if not isinstance(m.get("content"), (str, list)):
            problems.append(f"message {i}: content is neither a string nor a list of blocks")
        if prev is not None and prev.get("role") == m["role"]:
            problems.append(f"message {i}: two {m['role']} messages in a row")
        results = _tool_results(m)
        if results:
            calls = _tool_uses(prev) if prev is not None and prev.get("role") == "assistant" else []
            for r in results:
                if r not in calls:
                    problems.append(f"message {i}: tool_result {r!r} does not answer the previous message")
        uses = _tool_uses(m) if m["role"] == "assistant" else []
        if uses:
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            answered = _tool_results(nxt) if isinstance(nxt, dict) and nxt.get("role") == "user" else []
            for u in uses:
                if u not in answered:
                    problems.append(f"message {i}: tool_use {u!r} not answered in the next message")
        prev = m
    return problems
