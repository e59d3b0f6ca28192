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
from collections.abc import Mapping
from typing import Any

from ..base import Message, check_messages_body, messages_of, no_reason, unknown_message, with_messages
from ...pricing import ANTHROPIC_PRICING
from .markers import cache_hints
from .stream import assemble_stream, replay_stream
from .tokens import fixed_tokens, message_tokens

__all__ = ["assemble_stream", "cache_hints", "replay_stream", "fixed_tokens", "message_tokens"]

check_body, unmanaged, conversation, with_conversation = check_messages_body, no_reason, messages_of, with_messages

name = "anthropic"
upstream = "anthropic"
chat_path = "/v1/messages"
conversation_field = "messages"
key_fields = ("system", "tools")
output_fields = ("max_tokens",)
route = "messages"
sdk_key_env = "ANTHROPIC_API_KEY"
default_pricing = ANTHROPIC_PRICING
hint_fields: frozenset[str] = frozenset()
answer_headers = frozenset({b"anthropic-version", b"anthropic-beta"})
required_headers = ((b"anthropic-version", b"2023-06-01"),)
deferred_answer_fields = ("stream",)
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


def parse_message(index: int, wire: Any, encoding: str, tokens: int | None = None) -> Message:
    if tokens is None:
        tokens = message_tokens(wire, encoding)
    if not isinstance(wire, dict) or wire.get("role") not in ROLES:
        return unknown_message(index, wire, tokens)
    role = wire["role"]
    segments: list = []
    texts: list[str] = []
    call_ids: list[str] = []
    result_ids: list[str] = []
    calls: list = []
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
                calls.append(block.get("input"))
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
        index=index, role=role, wire=wire, tokens=tokens,
        text="\n".join(texts), segments=tuple(segments), call_ids=tuple(call_ids),
        result_ids=tuple(result_ids), calls=tuple(calls), opaque=opaque, unknown=unknown,
    )


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


def owns_path(path: str) -> bool:
    """/v1/messages and what lies under it (count_tokens, batches)."""
    return path == chat_path or path.startswith(chat_path + "/")


def recognises(headers: Mapping[str, str]) -> bool:
    """The Anthropic SDKs always send anthropic-version, the OpenAI SDKs never do."""
    return "anthropic-version" in headers


# top-level fields of the Messages API that Chat Completions does not take
_OWN_FIELDS = ("system", "anthropic_version", "stop_sequences", "top_k", "thinking")
_OWN_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking", "document"})


def body_signs(body: dict) -> list[str]:
    signs = [f"top-level {field}" for field in _OWN_FIELDS if field in body]
    messages = body.get("messages")
    blocks = [b for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
              for b in m["content"] if isinstance(b, dict)] if isinstance(messages, list) else []
    kinds = {b.get("type") for b in blocks}
    signs += [f"a content block of type {kind}" for kind in sorted(kinds & _OWN_BLOCKS)]
    if any(b.get("type") == "image" and "source" in b for b in blocks):
        signs.append("an image block with a source")
    # max_tokens alone is both APIs'; with text blocks, it is how Messages bodies look
    if "max_tokens" in body and "text" in kinds:
        signs.append("max_tokens with text content blocks")
    tools = body.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and "input_schema" in t for t in tools):
        signs.append("tools with an input_schema")
    return signs


def note_message(text: str) -> dict:
    """A block list, so the stable prefix's breakpoint can sit on it."""
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def system_messages(messages: list) -> list:
    """The system prompt is the top-level ``system`` field, not a message."""
    return []


def opening(body: dict) -> tuple[Any, Any]:
    first_user = next((m.get("content") for m in body.get("messages") or ()
                       if isinstance(m, dict) and m.get("role") == "user"), None)
    return body.get("system"), first_user


def latest_user_kept(original: list, sent: list) -> bool:
    """What the user last wrote (its blocks other than tool results, which may be
    cut to fit) reaches ``sent`` in order, within one user turn: a note of
    ctxwarden's may share the turn, since this dialect's turns alternate."""
    latest = next((m for m in reversed(original) if _user_wrote(m)), None)
    if latest is None:
        return True
    wanted = _words(latest.get("content"))
    for message in sent:
        if isinstance(message, dict) and message.get("role") == "user":
            have = _words(message.get("content"))
            if any(have[start:start + len(wanted)] == wanted for start in range(len(have) - len(wanted) + 1)):
                return True
    return False


def _user_wrote(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    content = message.get("content")
    return not (isinstance(content, list) and content and all(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content))


def _words(content: Any) -> list:
    """The blocks the user wrote, without cache markers (which move between turns)."""
    return [{k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b
            for b in _as_blocks(content) if not (isinstance(b, dict) and b.get("type") == "tool_result")]


def answer_text(body: Any) -> str:
    """The ``text`` blocks of ``content`` joined with no separator; ``""`` when there are none."""
    content = body.get("content") if isinstance(body, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b["text"] for b in content
                       if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def credential_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", api_key.encode())]


# The `type` of an error object, by HTTP status (Anthropic's API reference, "Errors").
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error", 504: "timeout_error"}


def error_body(status: int, message: str) -> dict:
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def stream_error_event(message: str) -> bytes:
    """The SDKs raise on a named ``error`` event."""
    return b"event: error\ndata: " + json.dumps(error_body(500, message)).encode() + b"\n\n"
