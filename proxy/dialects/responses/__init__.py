"""OpenAI Responses (``POST /v1/responses``) wire format <-> internal conversation.

A dialect of its own rather than a part of ``openai``: its conversation is
``input`` (a string, or a list of items), not ``messages``, its system prompt
is ``instructions``, its answers and streams have other shapes.  It is served
by the upstreams of the ``openai`` dialect and billed by their ``<pricing>``.

The rewrite works on ``input`` grouped into messages (:mod:`.items`): user,
system and developer message items as they are; each run of the model's own
items (assistant messages, ``function_call``, ``reasoning``) one assistant
group, never split; each ``function_call_output`` a tool group answering its
call by ``call_id``.  Text is editable in message content and in function
call outputs; a group holding a ``reasoning`` item is never edited (its
encrypted content goes back as it came, with the items it belongs to, or not
at all).  Items of other types (web_search_call, computer_call, custom tool
calls, item_reference, ...) are of unknown shape: the request passes through
unchanged, as chat requests with messages of unknown shape do.

A request whose history the server holds (``previous_response_id`` or
``conversation``) or that has no (or an empty) ``input`` is not rewritten: it
is sent as it came.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..base import Message, unknown_message
from ..openai import answer_headers, cache_hints, credential_headers, error_body, latest_user_kept, parts_text
from ...errors import BadRequest
from ...pricing import OPENAI_PRICING
from .items import GROUP, MESSAGE_ROLES, flatten, group, group_items, kind
from .stream import assemble_stream, replay_stream
from .tokens import fixed_tokens, message_tokens

__all__ = ["answer_headers", "assemble_stream", "cache_hints", "credential_headers", "error_body",
           "fixed_tokens", "latest_user_kept", "message_tokens", "replay_stream"]

name = "responses"
upstream = "openai"
chat_path = "/v1/responses"
route = "responses"
conversation_field = "input"
key_fields = ("instructions", "tools")
output_fields = ("max_output_tokens",)
sdk_key_env = "OPENAI_API_KEY"
default_pricing = OPENAI_PRICING
hint_fields = frozenset({"prompt_cache_key"})
required_headers: tuple[tuple[bytes, bytes], ...] = ()
deferred_answer_fields = ("stream", "background")   # background: the answer is fetched later by its id
ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
OPAQUE_PARTS = frozenset({"input_image", "input_file", "input_audio"})
# fields of an item that must be strings, by item type
_STRING_FIELDS = {"function_call": ("call_id", "name", "arguments"), "function_call_output": ("call_id",)}


# ------------------------------------------------------------------ requests

def check_body(body: dict) -> None:
    """``input`` a string or a list of items, each an object; the items this
    dialect rewrites (messages, function calls and their outputs) well formed;
    ``instructions`` a string.  Other item types are the API's to judge."""
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string")
    items = body.get("input")
    if items is None or isinstance(items, str):
        return
    if not isinstance(items, list):
        raise BadRequest("'input' must be a string or an array of items")
    for i, item in enumerate(items):
        item_kind = kind(item)
        if not item_kind:
            raise BadRequest(f"input[{i}] must be an object with a string 'type' or 'role'")
        if item_kind == "message":
            if item.get("role") not in ROLES:
                raise BadRequest(f"input[{i}].role must be one of {', '.join(sorted(ROLES))}")
            if not isinstance(item.get("content"), (str, list)):
                raise BadRequest(f"input[{i}].content must be a string or an array of content parts")
        for field in _STRING_FIELDS.get(item_kind, ()):
            if not isinstance(item.get(field), str):
                raise BadRequest(f"input[{i}].{field} must be a string")
        if item_kind == "function_call_output" and not isinstance(item.get("output"), (str, list)):
            raise BadRequest(f"input[{i}].output must be a string or an array of content parts")


def unmanaged(body: dict) -> str:
    """The server holds the history, or there is no input to rewrite."""
    for field in ("previous_response_id", "conversation"):
        if body.get(field) is not None:
            return f"{field} is set: the server holds the conversation"
    return "" if body.get("input") else "the request has no input"


def conversation(body: dict) -> list:
    return group(body.get("input"))


def with_conversation(body: dict, messages: list) -> dict:
    items = flatten(messages)
    return {k: (items if k == "input" else v) for k, v in body.items()}


def _content(content: Any, path: tuple, segments: list, texts: list) -> tuple[bool, bool]:
    """Editable text of a message's content or a call's output; (opaque, unknown)."""
    if isinstance(content, str):
        segments.append((path, content))
        texts.append(content)
        return False, False
    if not isinstance(content, list):
        return False, True
    return parts_text(content, path, segments, texts, TEXT_PARTS, OPAQUE_PARTS)


def parse_message(index: int, wire: Any, encoding: str, tokens: int | None = None) -> Message:
    if tokens is None:
        tokens = message_tokens(wire, encoding)
    items = group_items(wire)
    segments: list = []
    texts: list[str] = []
    call_ids: list[str] = []
    result_ids: list[str] = []
    arguments: list[str] = []
    if items is None:
        # a user, system or developer message item
        if kind(wire) != "message" or wire.get("role") not in MESSAGE_ROLES:
            return unknown_message(index, wire, tokens)
        role = wire["role"]
        opaque, unknown = _content(wire.get("content"), ("content",), segments, texts)
        frozen = False
    else:
        role = wire.get("role")
        opaque = frozen = False
        unknown = not items or role not in ("assistant", "tool")
        for k, item in enumerate(items):
            item_kind = kind(item)
            if role == "tool" and item_kind == "function_call_output" and len(items) == 1 \
                    and isinstance(item.get("call_id"), str):
                result_ids.append(item["call_id"])
                o, u = _content(item.get("output"), (GROUP, k, "output"), segments, texts)
            elif role == "assistant" and item_kind == "message" and item.get("role") == "assistant":
                o, u = _content(item.get("content"), (GROUP, k, "content"), segments, texts)
            elif role == "assistant" and item_kind == "function_call" and all(
                    isinstance(item.get(f), str) for f in _STRING_FIELDS["function_call"]):
                call_ids.append(item["call_id"])
                arguments.append(item["arguments"])
                texts.append(f"{item['name']} {item['arguments']}")
                o, u = False, False
            elif role == "assistant" and item_kind == "reasoning":
                texts.extend(part["text"] for part in item.get("summary") or ()
                             if isinstance(part, dict) and isinstance(part.get("text"), str))
                o, u, frozen = True, False, True
            else:
                o, u = False, True
            opaque, unknown = opaque or o, unknown or u
    if unknown or frozen:
        segments = []
    return Message(index=index, role=role, wire=wire, tokens=tokens, text="\n".join(texts),
                   segments=tuple(segments), call_ids=tuple(call_ids), result_ids=tuple(result_ids),
                   calls=tuple(arguments), opaque=opaque, unknown=unknown)


def check_structure(messages: Any) -> list[str]:
    """Problems with the messages' order and call pairing (empty list: valid):
    each function_call's output follows it before anything but other outputs
    of its run, and no output answers anything else."""
    if not isinstance(messages, list):
        return ["input is not a list"]
    problems: list[str] = []
    pending: list = []
    for i, message in enumerate(messages):
        items = group_items(message)
        role = message.get("role") if isinstance(message, dict) else None
        if items is not None and role == "tool":
            call_id = items[0].get("call_id") if len(items) == 1 and isinstance(items[0], dict) else None
            if call_id in pending:
                pending.remove(call_id)
            else:
                problems.append(f"message {i}: function_call_output {call_id!r} answers no pending function_call")
            continue
        if pending:
            problems.append(f"message {i}: function calls {pending} left without outputs")
        pending = []
        if items is None:
            if kind(message) != "message" or role not in MESSAGE_ROLES:
                problems.append(f"message {i}: unknown role or shape")
        elif role == "assistant":
            pending = [item.get("call_id") for item in items if kind(item) == "function_call"]
        else:
            problems.append(f"message {i}: an item of a type ctxwarden does not rewrite")
    if pending:
        problems.append(f"end: function calls {pending} left without outputs")
    return problems


def join_turns(messages: list, ours: set[int]) -> list:
    """The messages as they are: user messages may follow one another."""
    return messages


def owns_path(path: str) -> bool:
    """/v1/responses and what lies under it (a stored response, its input items, cancel, compact)."""
    return path == chat_path or path.startswith(chat_path + "/")


def recognises(headers: Mapping[str, str]) -> bool:
    """The OpenAI SDKs send nothing that tells this API from chat's."""
    return False


# top-level fields of the Responses API that neither chat API takes
_OWN_FIELDS = ("input", "instructions", "max_output_tokens", "previous_response_id", "conversation", "truncation",
               "include")
_OWN_ITEMS = frozenset({"function_call", "function_call_output", "reasoning", "item_reference"})


def body_signs(body: dict) -> list[str]:
    signs = [f"top-level {field}" for field in _OWN_FIELDS if field in body]
    items = body.get("input")
    kinds = {item.get("type") for item in items if isinstance(item, dict)} if isinstance(items, list) else set()
    signs += [f"an input item of type {kind}" for kind in sorted(kinds & _OWN_ITEMS)]
    return signs


def note_message(text: str) -> dict:
    return {"role": "user", "content": text}


def system_messages(messages: list) -> list:
    """The system and developer message items (``instructions`` is a field of its own)."""
    return [m for m in messages if group_items(m) is None and isinstance(m, dict)
            and m.get("role") in ("system", "developer")]


def opening(body: dict) -> tuple[Any, Any]:
    """``instructions`` and the system and developer messages before the first
    user message, and that message's content."""
    systems: list = [body["instructions"]] if body.get("instructions") is not None else []
    for message in conversation(body):
        if group_items(message) is not None:
            continue
        if message.get("role") == "user":
            return systems, message.get("content")
        systems.append(message.get("content"))
    return systems, None


def answer_text(body: Any) -> str:
    """The ``output_text`` parts of the answer's message items, joined; ``""`` when there are none."""
    output = body.get("output") if isinstance(body, dict) else None
    if not isinstance(output, list):
        return ""
    return "".join(part["text"] for item in output if kind(item) == "message"
                   for part in item.get("content") or ()
                   if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str))


def stream_error_event(message: str) -> bytes:
    """The API's own ``error`` event: the SDKs end the stream on it without a response."""
    data = {"type": "error", "code": "server_error", "message": message, "param": None}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
