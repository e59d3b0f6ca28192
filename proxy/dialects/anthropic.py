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

from ..pipeline.model import Conversation, Message, build_conversation
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


def parse_message(index: int, wire: Any, encoding: str) -> Message:
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
    return build_conversation(body, DIALECT, encoding, parse_message, fixed, check_structure)


def join_turns(messages: list, ours: set[int]) -> list:
    """The messages with ctxwarden's own user messages (positions in ``ours``)
    joined into the neighbouring user turn as text blocks, because this
    dialect's turns alternate: after a user turn (behind its tool results),
    else before the next user turn, else on their own."""
    out: list = []
    carry: list = []
    for position, message in enumerate(messages):
        if position in ours:
            blocks = _as_blocks(message.get("content"))
            if out and isinstance(out[-1], dict) and out[-1].get("role") == "user" and not carry:
                out[-1] = {**out[-1], "content": _as_blocks(out[-1].get("content")) + blocks}
            elif (position + 1 < len(messages) and position + 1 not in ours and isinstance(messages[position + 1], dict)
                    and messages[position + 1].get("role") == "user" and not _tool_results(messages[position + 1])):
                carry.extend(blocks)
            else:
                out.append(message)
            continue
        if carry:
            message = {**message, "content": carry + _as_blocks(message.get("content"))}
            carry = []
        out.append(message)
    return out


def _as_blocks(content: Any) -> list:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())


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
    """Problems with turn order / tool_use pairing (empty list: valid).

    Consecutive messages of one role form one turn, as the API combines them:
    the user turn after an assistant turn with tool_use blocks must open with
    a tool_result for each of them, and no tool_result may answer anything else."""
    if not isinstance(messages, list):
        return ["messages is not a list"]
    problems: list[str] = []
    turns: list[tuple[str, list, int]] = []     # (role, blocks, index of its first message)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            problems.append(f"message {i}: unknown role or shape")
            turns.append(("", [], i))
            continue
        content = m.get("content")
        if not isinstance(content, (str, list)):
            problems.append(f"message {i}: content is neither a string nor a list of blocks")
        if turns and turns[-1][0] == m["role"]:
            turns[-1][1].extend(_as_blocks(content) if isinstance(content, (str, list)) else [])
        else:
            turns.append((m["role"], _as_blocks(content) if isinstance(content, (str, list)) else [], i))
    for (role, blocks, first), following in zip(turns, turns[1:] + [("", [], len(messages))]):
        if role == "user":
            results = [b.get("tool_use_id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
            leading = 0
            while leading < len(blocks) and isinstance(blocks[leading], dict) \
                    and blocks[leading].get("type") == "tool_result":
                leading += 1
            if leading != len(results):
                problems.append(f"message {first}: tool_result blocks must open the user turn")
        if role != "assistant":
            continue
        uses = [b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
        answered = [b.get("tool_use_id") for b in following[1]
                    if isinstance(b, dict) and b.get("type") == "tool_result"] if following[0] == "user" else []
        problems.extend(f"message {first}: tool_use {u!r} not answered in the next turn"
                        for u in uses if u not in answered)
        problems.extend(f"message {following[2]}: tool_result {r!r} does not answer the previous turn"
                        for r in answered if r not in uses)
    if turns and turns[0][0] == "user":
        stray = [b for b in turns[0][1] if isinstance(b, dict) and b.get("type") == "tool_result"]
        if stray:
            problems.append("message 0: tool_result without a tool_use before it")
    return problems
