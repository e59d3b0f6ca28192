"""OpenAI Chat Completions wire format <-> internal conversation.

Roles: system, developer, user, assistant, tool (answers an assistant
``tool_calls`` entry by ``tool_call_id``) and the legacy ``function`` (answers an
assistant ``function_call``).  Content is a string, null, or a list of parts
(``text`` parts are editable; image/audio/file parts are kept as they are).
A message with an unknown role or content shape is marked ``unknown``: the
pipeline treats it as critical and never edits or drops it.
"""
from __future__ import annotations

import json
from typing import Any

from ..pipeline.model import Conversation, Message, build_conversation
from ..tokens import DEFAULT_ENCODING, count_message_tokens, openai_fixed_tokens

DIALECT = "openai"
KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OPAQUE_PARTS = frozenset({"image_url", "input_audio", "file", "image", "input_image", "audio"})
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def parse_message(index: int, wire: Any, encoding: str) -> Message:
    tokens = count_message_tokens(wire, DIALECT, encoding)
    if not isinstance(wire, dict) or not isinstance(wire.get("role"), str) or wire["role"] not in KNOWN_ROLES:
        role = wire.get("role") if isinstance(wire, dict) and isinstance(wire.get("role"), str) else ""
        return Message(index=index, role=role, wire=wire, tokens=tokens, dialect=DIALECT,
                       unknown=True, tokens_before=tokens)
    role = wire["role"]
    segments: list = []
    texts: list[str] = []
    opaque = False
    unknown = False
    content = wire.get("content")
    if isinstance(content, str):
        segments.append((("content",), content))
        texts.append(content)
    elif isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                unknown = True
                continue
            ptype = part.get("type")
            if ptype in TEXT_PARTS and isinstance(part.get("text"), str):
                segments.append((("content", i, "text"), part["text"]))
                texts.append(part["text"])
            elif ptype == "refusal" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            elif ptype in OPAQUE_PARTS:
                opaque = True
            else:
                unknown = True
    elif content is not None:
        unknown = True

    call_ids: list[str] = []
    result_ids: list[str] = []
    if role == "assistant":
        calls = wire.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                unknown = True
            else:
                for call in calls:
                    if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                        unknown = True
                        continue
                    call_ids.append(call["id"])
                    fn = call.get("function")
                    if isinstance(fn, dict):
                        texts.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
                    else:
                        texts.append(json.dumps(call, ensure_ascii=False, sort_keys=True))
        fc = wire.get("function_call")
        if isinstance(fc, dict):
            call_ids.append("function_call")
            texts.append(f"{fc.get('name', '')} {fc.get('arguments', '')}")
    elif role == "tool":
        tcid = wire.get("tool_call_id")
        if isinstance(tcid, str):
            result_ids.append(tcid)
        else:
            unknown = True
    elif role == "function":
        result_ids.append("function_call")

    if unknown:
        segments = []
    return Message(
        index=index, role=role, wire=wire, tokens=tokens, dialect=DIALECT,
        text="\n".join(texts), segments=tuple(segments), call_ids=tuple(call_ids),
        result_ids=tuple(result_ids), opaque=opaque, unknown=unknown,
        is_system=role in ("system", "developer"), tokens_before=tokens,
    )


def to_conversation(body: dict, encoding: str = DEFAULT_ENCODING) -> Conversation:
    """Parse a Chat Completions request body. Raises ValueError if it has no message list."""
    fixed = openai_fixed_tokens(body, encoding) if isinstance(body, dict) else 0
    return build_conversation(body, DIALECT, encoding, parse_message, fixed, check_structure)


def join_turns(messages: list, ours: set[int]) -> list:
    """The messages as they are: this dialect takes user messages in a row."""
    return messages


def check_structure(messages: Any) -> list[str]:
    """Problems with role order / tool-call pairing (empty list: valid)."""
    problems: list[str] = []
    if not isinstance(messages, list):
        return ["messages is not a list"]
    pending: list[str] = []
    in_run = False
    fn_pending = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in KNOWN_ROLES:
            problems.append(f"message {i}: unknown role or shape")
            pending, in_run, fn_pending = [], False, False
            continue
        role = m["role"]
        if role == "tool":
            tcid = m.get("tool_call_id")
            if not in_run:
                problems.append(f"message {i}: tool result not preceded by its assistant tool call")
            elif tcid not in pending:
                problems.append(f"message {i}: tool result {tcid!r} answers no pending call")
            else:
                pending.remove(tcid)
            continue
        if role == "function":
            if not fn_pending:
                problems.append(f"message {i}: function result without a function_call")
            fn_pending = False
            continue
        if pending:
            problems.append(f"message {i}: tool calls {pending} left without results")
        if fn_pending:
            problems.append(f"message {i}: function_call left without a result")
        pending, in_run, fn_pending = [], False, False
        if role == "assistant":
            calls = m.get("tool_calls")
            if isinstance(calls, list) and calls:
                pending = [c.get("id") for c in calls if isinstance(c, dict)]
                in_run = True
            if isinstance(m.get("function_call"), dict):
                fn_pending = True
    if pending:
        problems.append(f"end: tool calls {pending} left without results")
    if fn_pending:
        problems.append("end: function_call left without a result")
    return problems
