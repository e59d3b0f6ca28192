"""Responses streams: the answer a stream adds up to, and a stored answer
replayed as a stream.

A Responses stream is named events (``event: response.output_text.delta`` ...),
each ``data`` an object whose ``type`` is the event's name and which carries a
``sequence_number``.  It ends with ``response.completed`` (or
``response.incomplete``, when ``max_output_tokens`` ran out), whose
``response`` is the whole answer, the very object a plain request gets; or
with ``response.failed`` or ``error``, which are never stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..base import SSEEvent, StreamInvalid, dumps

FINISHED = frozenset({"response.completed", "response.incomplete"})
FAILED = frozenset({"response.failed", "error"})


def assemble_stream(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    """The response a stream finished with, or None when it did not finish cleanly."""
    answer = None
    for event, data in events:
        if event in FAILED:
            return None
        if not data.strip():
            continue
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise StreamInvalid("event data is not an object")
        kind = obj.get("type")
        if kind in FAILED:
            return None
        if kind in FINISHED:
            response = obj.get("response")
            if not isinstance(response, dict):
                raise StreamInvalid(f"{kind} without its response")
            answer = response
    return answer


class _Events:
    """Events in order, numbered as the API numbers them."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        data = {"type": kind, "sequence_number": len(self.out), **fields}
        self.out.append(b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n")


_EMPTY_PART = {"output_text": {"type": "output_text", "annotations": [], "text": ""},
               "refusal": {"type": "refusal", "refusal": ""}}
_DELTAS = {"output_text": ("response.output_text", "text"), "refusal": ("response.refusal", "refusal")}


def _message(events: _Events, index: int, item: dict) -> None:
    ids = {"item_id": item.get("id"), "output_index": index}
    for at, part in enumerate(item.get("content") or ()):
        kind = part.get("type") if isinstance(part, dict) else None
        events.add("response.content_part.added", **ids, content_index=at,
                   part=_EMPTY_PART.get(kind, part))
        if kind in _DELTAS and isinstance(part.get(_DELTAS[kind][1]), str):
            prefix, field = _DELTAS[kind]
            extra = {"logprobs": part.get("logprobs") or []} if kind == "output_text" else {}
            events.add(prefix + ".delta", **ids, content_index=at, delta=part[field], **extra)
            events.add(prefix + ".done", **ids, content_index=at, **{field: part[field]}, **extra)
        events.add("response.content_part.done", **ids, content_index=at, part=part)


def _reasoning(events: _Events, index: int, item: dict) -> None:
    ids = {"item_id": item.get("id"), "output_index": index}
    for at, part in enumerate(item.get("summary") or ()):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            continue
        events.add("response.reasoning_summary_part.added", **ids, summary_index=at,
                   part={"type": "summary_text", "text": ""})
        events.add("response.reasoning_summary_text.delta", **ids, summary_index=at, delta=text)
        events.add("response.reasoning_summary_text.done", **ids, summary_index=at, text=text)
        events.add("response.reasoning_summary_part.done", **ids, summary_index=at, part=part)


def _started(item: dict) -> dict:
    """The item as ``response.output_item.added`` announces it, before its content."""
    kind = item.get("type")
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    if kind == "reasoning":
        return {**item, "summary": []}
    return item


def replay_stream(answer: dict[str, Any], include_usage: bool = False) -> list[bytes]:
    """The events of a live stream of a stored response (``include_usage``
    is chat's: a Responses stream always ends with the usage)."""
    output = answer.get("output")
    if answer.get("object") != "response" or not isinstance(output, list):
        raise ValueError("answer is not a response")
    events = _Events()
    started = {**answer, "status": "in_progress", "output": [], "usage": None}
    if "incomplete_details" in started:
        started["incomplete_details"] = None
    events.add("response.created", response=started)
    events.add("response.in_progress", response=started)
    for index, item in enumerate(output):
        if not isinstance(item, dict):
            raise ValueError("an output item is not an object")
        events.add("response.output_item.added", output_index=index, item=_started(item))
        if item.get("type") == "message":
            _message(events, index, item)
        elif item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
            ids = {"item_id": item.get("id"), "output_index": index}
            events.add("response.function_call_arguments.delta", **ids, delta=item["arguments"])
            events.add("response.function_call_arguments.done", **ids, arguments=item["arguments"])
        elif item.get("type") == "reasoning":
            _reasoning(events, index, item)
        events.add("response.output_item.done", output_index=index, item=item)
    events.add("response.incomplete" if answer.get("status") == "incomplete" else "response.completed",
               response=answer)
    return events.out
