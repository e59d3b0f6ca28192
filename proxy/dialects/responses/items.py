"""A Responses request's ``input`` as the messages the rewrite works on, and back.

The rewrite works on a list of messages with roles, as chat has them: an
assistant message that makes calls, then one message per result.  In a
Responses ``input`` one assistant turn is several items (reasoning, a message,
function calls), and the API wants them together: a reasoning item comes with
the item that followed it, a call with its output.  So:

- a ``user``, ``system`` or ``developer`` message item is a message of its
  own, as it is (ctxwarden's own note and recall are user messages of the
  same shape);
- each run of the model's own items (assistant messages, ``function_call``,
  ``reasoning``) is one group ``{"role": "assistant", "items": [...]}``, kept
  or compacted whole, never split;
- each ``function_call_output`` is a group ``{"role": "tool", "items": [item]}``;
- anything else (another item type, a message of another role, a value that
  is not an object) is a group ``{"role": "", "items": [item]}``: a message of
  unknown shape, which the rewrite never touches.

``flatten`` gives the items back, the very objects: what the rewrite kept is
the client's, byte for byte.
"""
from __future__ import annotations

from typing import Any

GROUP = "items"
MESSAGE_ROLES = frozenset({"user", "system", "developer"})
OUTPUT_TYPES = frozenset({"function_call", "reasoning"})


def kind(item: Any) -> str:
    """``message`` (with or without ``"type": "message"``), another item's
    ``type``, or ``""`` when it is neither."""
    if not isinstance(item, dict):
        return ""
    item_type = item.get("type")
    if item_type is None and "role" in item:
        return "message"
    return item_type if isinstance(item_type, str) else ""


def _group_role(item: Any) -> str | None:
    """The role of the group an item joins; None: a message of its own."""
    item_kind = kind(item)
    if item_kind == "message":
        role = item.get("role")
        if role in MESSAGE_ROLES:
            return None
        return "assistant" if role == "assistant" else ""
    if item_kind in OUTPUT_TYPES:
        return "assistant"
    return "tool" if item_kind == "function_call_output" else ""


def group(input_value: Any) -> list:
    """The messages of an ``input``: a string is one user message."""
    if isinstance(input_value, str):
        return [{"role": "user", "content": input_value}]
    if not isinstance(input_value, list):
        return []
    messages: list = []
    run: list | None = None
    for item in input_value:
        role = _group_role(item)
        if role is None:
            messages.append(item)
            run = None
        elif role == "assistant":
            if run is None:
                run = []
                messages.append({"role": "assistant", GROUP: run})
            run.append(item)
        else:
            messages.append({"role": role, GROUP: [item]})
            run = None
    return messages


def group_items(message: Any) -> list | None:
    """A group's items; None for a message that is an item itself."""
    if isinstance(message, dict) and message.get("role") not in MESSAGE_ROLES and isinstance(message.get(GROUP), list):
        return message[GROUP]
    return None


def flatten(messages: list) -> list:
    """The items of ``messages``, groups opened, in order."""
    items: list = []
    for message in messages:
        grouped = group_items(message)
        if grouped is None:
            items.append(message)
        else:
            items.extend(grouped)
    return items
