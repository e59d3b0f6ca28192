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
from collections.abc import Mapping
from typing import Any

from ..base import Message, check_messages_body, messages_of, no_reason, unknown_message, with_messages
from ...pricing import OPENAI_PRICING, Pricing
from .stream import assemble_stream, replay_stream
from .tokens import fixed_tokens, message_tokens

__all__ = ["assemble_stream", "replay_stream", "fixed_tokens", "message_tokens"]

check_body, unmanaged, conversation, with_conversation = check_messages_body, no_reason, messages_of, with_messages

name = "openai"
upstream = "openai"
chat_path = "/v1/chat/completions"
conversation_field = "messages"
key_fields = ("system", "tools")
output_fields = ("max_completion_tokens", "max_tokens")
route = "chat_completions"
sdk_key_env = "OPENAI_API_KEY"
default_pricing = OPENAI_PRICING
hint_fields = frozenset({"prompt_cache_key"})
answer_headers = frozenset({b"openai-beta"})
required_headers: tuple[tuple[bytes, bytes], ...] = ()
deferred_answer_fields = ("stream",)
SYSTEM_ROLES = ("system", "developer")
KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OPAQUE_PARTS = frozenset({"image_url", "input_audio", "file", "image", "input_image", "audio"})
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def parts_text(parts: list, path: tuple, segments: list, texts: list, text_parts: frozenset[str],
               opaque_parts: frozenset[str]) -> tuple[bool, bool]:
    """The editable text of a list of typed content parts (Chat Completions'
    and the Responses API's), added to ``segments`` under ``path``; whether a
    part is opaque (an image, a file) or of a type not known."""
    opaque = unknown = False
    for i, part in enumerate(parts):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in text_parts and isinstance(part.get("text"), str):
            segments.append(((*path, i, "text"), part["text"]))
            texts.append(part["text"])
        elif ptype == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif ptype in opaque_parts:
            opaque = True
        else:
            unknown = True
    return opaque, unknown


def parse_message(index: int, wire: Any, encoding: str, tokens: int | None = None) -> Message:
    if tokens is None:
        tokens = message_tokens(wire, encoding)
    if not isinstance(wire, dict) or not isinstance(wire.get("role"), str) or wire["role"] not in KNOWN_ROLES:
        return unknown_message(index, wire, tokens)
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
        opaque, unknown = parts_text(content, ("content",), segments, texts, TEXT_PARTS, OPAQUE_PARTS)
    elif content is not None:
        unknown = True

    call_ids: list[str] = []
    result_ids: list[str] = []
    arguments: list = []
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
                        arguments.append(fn.get("arguments", ""))
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
        index=index, role=role, wire=wire, tokens=tokens,
        text="\n".join(texts), segments=tuple(segments), call_ids=tuple(call_ids),
        result_ids=tuple(result_ids), calls=tuple(arguments), opaque=opaque, unknown=unknown,
    )


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


def owns_path(path: str) -> bool:
    return path == chat_path


def recognises(headers: Mapping[str, str]) -> bool:
    """The OpenAI SDKs send nothing of their own: this dialect is the default."""
    return False


# top-level fields of Chat Completions that the Messages API does not take
_OWN_FIELDS = ("max_completion_tokens", "response_format", "stream_options", "frequency_penalty",
               "presence_penalty", "logprobs", "logit_bias", "parallel_tool_calls", "prompt_cache_key",
               "reasoning_effort", "n", "seed")
_OWN_ROLES = frozenset({"system", "developer", "tool", "function"})
_OWN_PARTS = frozenset({"image_url", "input_audio", "file"})


def body_signs(body: dict) -> list[str]:
    signs = [f"top-level {field}" for field in _OWN_FIELDS if field in body]
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    roles = sorted({m.get("role") for m in messages} & _OWN_ROLES)
    signs += [f"a message of role {role}" for role in roles]
    if any("tool_calls" in m or "function_call" in m for m in messages):
        signs.append("tool_calls in an assistant message")
    parts = {p.get("type") for m in messages if isinstance(m.get("content"), list)
             for p in m["content"] if isinstance(p, dict)}
    signs += [f"a content part of type {kind}" for kind in sorted(parts & _OWN_PARTS)]
    tools = body.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools):
        signs.append("tools declared as functions")
    return signs


def note_message(text: str) -> dict:
    return {"role": "user", "content": text}


def system_messages(messages: list) -> list:
    return [m for m in messages if isinstance(m, dict) and m.get("role") in SYSTEM_ROLES]


def opening(body: dict) -> tuple[Any, Any]:
    """The system and developer messages before the first user message, and that message's content."""
    systems: list = []
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        if m.get("role") in SYSTEM_ROLES:
            systems.append(m.get("content"))
        elif m.get("role") == "user":
            return systems, m.get("content")
    return systems, None


def latest_user_kept(original: list, sent: list) -> bool:
    """The latest user message is sent whole (this dialect's tool results are messages of their own)."""
    latest = next((m for m in reversed(original) if isinstance(m, dict) and m.get("role") == "user"), None)
    if latest is None:
        return True
    if any(m is latest for m in sent):
        return True
    wanted = _canonical(latest)
    return any(_canonical(m) == wanted for m in sent)


def _canonical(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def cache_hints(body: dict, pricing: Pricing, stable_messages: int, conversation: str) -> dict:
    """OpenAI caches the longest prefix it has seen on its own; a ``prompt_cache_key``
    from the conversation's hash sends the conversation's requests to the same cache."""
    if (pricing.cache != "openai" or not pricing.prompt_cache_key or "prompt_cache_key" in body
            or not conversation):
        return body
    return {**body, "prompt_cache_key": "ctxw-" + conversation[:32]}


def answer_text(body: Any) -> str:
    """``choices[0].message.content``: a string, or the text of its parts joined
    (servers that answer with parts do not always type them); ``""`` when there is none."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def credential_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


# The `type` of an error object, by HTTP status (OpenAI's API reference, "Error codes").
_ERROR_TYPES = {429: "requests", 504: "timeout"}


def error_body(status: int, message: str) -> dict:
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def stream_error_event(message: str) -> bytes:
    """The SDKs raise on a ``data:`` event carrying an ``error`` object."""
    return b"data: " + json.dumps(error_body(500, message)).encode() + b"\n\n"
