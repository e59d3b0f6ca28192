"""Anthropic Messages streams: ``message_start`` ... ``message_stop`` assembled
into the ``message`` it adds up to, and a stored answer replayed as one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from ..base import SSEEvent, StreamInvalid, dumps


_TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_MESSAGE_DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


def assemble_stream(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    """The ``message`` object a ``message_start`` ... ``message_stop`` stream adds up to.
    None when it did not finish; raises on what does not fit (see cache.sse.StreamRecorder)."""
    message: dict[str, Any] | None = None
    initial: list[Any] = []
    blocks: dict[int, dict[str, Any]] = {}
    json_parts: dict[int, list[str]] = {}
    open_blocks: set[int] = set()
    stopped = False
    for event, data in events:
        if stopped:
            continue
        if event == "error":
            return None
        if event == "ping" or not data.strip():
            continue
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise StreamInvalid("event is not an object")
        kind = obj.get("type") or event
        if kind == "ping":
            continue
        if kind == "error":
            return None
        if kind == "message_start":
            if message is not None:
                raise StreamInvalid("second message_start")
            message = copy.deepcopy(obj["message"])
            if not isinstance(message, dict):
                raise StreamInvalid("message")
            initial = list(message.get("content") or [])
            continue
        if message is None:
            raise StreamInvalid(f"{kind} before message_start")
        if kind == "content_block_start":
            index = obj["index"]
            block = copy.deepcopy(obj["content_block"])
            if not isinstance(index, int) or index in blocks or not isinstance(block, dict):
                raise StreamInvalid("content_block_start")
            blocks[index] = block
            open_blocks.add(index)
        elif kind == "content_block_delta":
            index = obj["index"]
            if index not in open_blocks:
                raise StreamInvalid("delta for a block not open")
            block = blocks[index]
            delta = obj["delta"]
            dtype = delta["type"]
            if dtype == "text_delta":
                block["text"] = (block.get("text") or "") + delta["text"]
            elif dtype == "input_json_delta":
                json_parts.setdefault(index, []).append(delta.get("partial_json") or "")
            elif dtype == "thinking_delta":
                block["thinking"] = (block.get("thinking") or "") + delta["thinking"]
            elif dtype == "signature_delta":
                block["signature"] = delta["signature"]
            elif dtype == "citations_delta":
                citations = block.get("citations")
                if not isinstance(citations, list):
                    citations = block["citations"] = []
                citations.append(delta["citation"])
            else:
                raise StreamInvalid(f"unknown delta {dtype!r}")
        elif kind == "content_block_stop":
            index = obj["index"]
            if index not in open_blocks:
                raise StreamInvalid("stop for a block not open")
            open_blocks.discard(index)
            text = "".join(json_parts.pop(index, ()))
            if text:
                blocks[index]["input"] = json.loads(text)
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            for key, value in delta.items():
                if key == "container" and value is None:
                    continue
                message[key] = value
            usage = obj.get("usage") or {}
            acc = message.get("usage")
            if not isinstance(acc, dict):
                acc = message["usage"] = {}
            for key, value in usage.items():
                if value is not None or key == "output_tokens":
                    acc[key] = value
        elif kind == "message_stop":
            stopped = True
        else:
            raise StreamInvalid(f"unknown event {kind!r}")
    if message is None or not stopped or open_blocks:
        return None
    message["content"] = initial + [blocks[i] for i in sorted(blocks)]
    return message


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode("ascii") + b"\ndata: " + dumps({"type": kind, **obj}) + b"\n\n"


def replay_stream(answer: dict[str, Any], include_usage: bool = False) -> list[bytes]:
    """The events of a live stream of ``answer`` (which always carries its usage here)."""
    content = answer.get("content")
    if not isinstance(content, list):
        raise ValueError("answer has no content list")
    # the answer's own key order, with what only message_delta may tell still unset
    start = dict(answer)
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    if "stop_details" in start:
        start["stop_details"] = None
    start.setdefault("type", "message")
    events = [_event("message_start", {"message": start})]
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            raise ValueError("content block is not an object")
        btype = block.get("type")
        deltas: list[dict[str, Any]] = []
        head = dict(block)
        if btype == "text":
            head["text"] = ""
            citations = block.get("citations")
            if isinstance(citations, list):
                head["citations"] = []
                deltas += [{"type": "citations_delta", "citation": c} for c in citations]
            if block.get("text"):
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif btype == "thinking":
            head["thinking"] = ""
            head["signature"] = ""
            if block.get("thinking"):
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif btype in _TOOL_INPUT_BLOCKS and isinstance(block.get("input"), dict):
            head["input"] = {}
            partial = dumps(block["input"]).decode("utf-8") if block["input"] else ""
            deltas.append({"type": "input_json_delta", "partial_json": partial})
        events.append(_event("content_block_start", {"index": index, "content_block": head}))
        for delta in deltas:
            events.append(_event("content_block_delta", {"index": index, "delta": delta}))
        events.append(_event("content_block_stop", {"index": index}))
    delta: dict[str, Any] = {
        "stop_reason": answer.get("stop_reason"),
        "stop_sequence": answer.get("stop_sequence"),
    }
    for key in ("stop_details", "container"):
        if answer.get(key) is not None:
            delta[key] = answer[key]
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    delta_usage: dict[str, Any] = {"output_tokens": usage.get("output_tokens", 0)}
    for key in _MESSAGE_DELTA_USAGE:
        if usage.get(key) is not None:
            delta_usage[key] = usage[key]
    events.append(_event("message_delta", {"delta": delta, "usage": delta_usage}))
    events.append(_event("message_stop", {}))
    return events
