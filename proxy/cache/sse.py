"""Server-sent events for the cache: record a live stream, replay a stored answer.

Recording
    :class:`StreamRecorder` is fed the raw SSE bytes exactly as they are relayed
    (split anywhere, CRLF, CR or LF line ends). ``feed`` only keeps the bytes
    (cheap on the relay path); ``result()`` parses them once and assembles the
    complete non-streaming JSON answer the upstream would have sent for the same
    request, or returns ``None`` when the stream did not complete cleanly:

    * OpenAI: ``data: [DONE]`` seen and every choice has a ``finish_reason``;
    * Anthropic: ``message_start`` ... ``message_stop`` with every content block
      stopped;
    * any ``error`` event, an error object, unparseable JSON, an unknown
      Anthropic event or delta type, or more than ``max_bytes`` fed: ``None``
      (we never store what we do not fully understand).

    Only feed it a 2xx ``text/event-stream`` response; the HTTP status is the
    caller's business.

Replaying
    :func:`replay_sse` turns a stored complete answer back into the events a live
    stream carries, one ``bytes`` per event, such that the official SDKs parse it
    exactly as a live answer (tested against openai and anthropic SDK parsers),
    and such that ``StreamRecorder`` fed the replay gives back the same answer.
    Each text field travels as one delta (all bytes are available at once, so
    splitting would only add overhead).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Iterable

__all__ = [
    "DIALECTS",
    "SSEParser",
    "StreamRecorder",
    "assemble_anthropic",
    "assemble_openai",
    "replay_sse",
]

DIALECTS = ("openai", "anthropic")

SSEEvent = tuple[str | None, str]  # (event name or None, data)

_EOL = re.compile(rb"\r\n|\r|\n")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Invalid(Exception):
    """The stream cannot be turned into an answer."""


# --------------------------------------------------------------------------- parsing


class SSEParser:
    """Incremental SSE decoder following the WHATWG event-stream rules.

    ``feed(bytes)`` returns the events completed by that chunk as ``(event,
    data)`` pairs; ``finish()`` flushes a last event that lacked its closing
    blank line (lenient: a stream cut right after its final event still counts).
    Raises ``UnicodeDecodeError`` on bytes that are not UTF-8.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else bytes(chunk)
        events: list[SSEEvent] = []
        pos = 0
        for m in _EOL.finditer(buf):
            self._line(buf[pos : m.start()], events)
            pos = m.end()
        if pos and buf[pos - 1 : pos] == b"\r" and pos == len(buf):
            self._skip_lf = True  # a CR at the very end may be the first half of CRLF
        self._buf = buf[pos:]
        return events

    def finish(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data or self._event is not None:
                events.append((self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            return
        line = raw.decode("utf-8")
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value or None
        # id / retry / unknown fields carry nothing the answer needs


def parse_sse(data: bytes | Iterable[bytes]) -> list[SSEEvent]:
    """All events of a complete SSE byte string (or chunks)."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        events.extend(parser.feed(bytes(chunk)))
    events.extend(parser.finish())
    return events


# --------------------------------------------------------------------------- OpenAI assembly

# string fields that name or tag something: a repeat replaces (or is dropped), never appends
_SET_KEYS = frozenset({"id", "type", "name", "role", "index", "object", "expires_at"})


def _merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Merge one streamed delta into the accumulated object (SDK accumulate_delta rules)."""
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            calls = acc.setdefault("tool_calls", {})
            if not isinstance(calls, dict):
                raise _Invalid("tool_calls")
            for part in value:
                if not isinstance(part, dict):
                    raise _Invalid("tool_call delta")
                index = part.get("index", len(calls))
                if isinstance(index, bool) or not isinstance(index, int):
                    raise _Invalid("tool_call index")
                _merge(calls.setdefault(index, {}), {k: v for k, v in part.items() if k != "index"})
            continue
        if key not in acc or acc[key] is None:
            acc[key] = copy.deepcopy(value)
            continue
        if value is None:
            continue
        old = acc[key]
        if isinstance(old, str) and isinstance(value, str):
            if key in _SET_KEYS:
                if value and value != old:
                    acc[key] = old + value if old else value
            else:
                acc[key] = old + value
        elif isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(copy.deepcopy(value))
        else:
            acc[key] = copy.deepcopy(value)


def _finish_message(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("role", "content", "refusal"):
        if key in message:
            out[key] = message[key]
    if "role" not in out:
        out["role"] = "assistant"
    for key, value in message.items():
        if key in out:
            continue
        if key == "tool_calls":
            calls = []
            for index in sorted(value):
                call = value[index]
                ordered = {k: call[k] for k in ("id", "type", "function") if k in call}
                ordered.update({k: v for k, v in call.items() if k not in ordered})
                calls.append(ordered)
            out["tool_calls"] = calls
        else:
            out[key] = value
    return out


def _merge_logprobs(acc: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if acc is None:
        return copy.deepcopy(part)
    for key, value in part.items():
        if isinstance(value, list):
            acc[key] = (acc.get(key) or []) + copy.deepcopy(value)
        elif value is not None or key not in acc:
            acc[key] = copy.deepcopy(value)
    return acc


def assemble_openai(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    """The ``chat.completion`` object a stream of ``chat.completion.chunk`` events adds up to."""
    try:
        return _assemble_openai(events)
    except (_Invalid, ValueError, TypeError, KeyError, AttributeError):
        return None


def _assemble_openai(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    top: dict[str, Any] = {}
    usage: Any = None
    has_usage = False
    choices: dict[int, dict[str, Any]] = {}
    done = False
    for event, data in events:
        if done:
            continue
        if event == "error":
            return None
        if data.startswith("[DONE]"):
            done = True
            continue
        if not data.strip():
            continue
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise _Invalid("chunk is not an object")
        if obj.get("error"):
            return None
        for key, value in obj.items():
            if key in ("choices", "usage", "object", "obfuscation"):
                continue
            # Azure content-filter chunks carry "" for id/model: never let them blank a real value
            if key not in top or (value is not None and value != ""):
                top[key] = value
        if "usage" in obj:
            if obj["usage"] is not None:
                usage = obj["usage"]
                has_usage = True
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                raise _Invalid("choice")
            index = choice.get("index", 0)
            if isinstance(index, bool) or not isinstance(index, int):
                raise _Invalid("choice index")
            state = choices.setdefault(index, {"message": {}, "finish_reason": None, "logprobs": None, "extra": {}})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                _merge(state["message"], delta)
            elif delta is not None:
                raise _Invalid("delta")
            if choice.get("finish_reason") is not None:
                state["finish_reason"] = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                state["logprobs"] = _merge_logprobs(state["logprobs"], logprobs)
            for key, value in choice.items():
                if key not in ("index", "delta", "finish_reason", "logprobs") and (
                    value is not None or key not in state["extra"]
                ):
                    state["extra"][key] = value
    if not done or not choices or any(s["finish_reason"] is None for s in choices.values()):
        return None
    answer: dict[str, Any] = {}
    for key in ("id", "object", "created", "model"):
        if key == "object":
            answer["object"] = "chat.completion"
        elif key in top:
            answer[key] = top[key]
    answer["choices"] = [
        {
            "index": index,
            "message": _finish_message(choices[index]["message"]),
            "logprobs": choices[index]["logprobs"],
            "finish_reason": choices[index]["finish_reason"],
            **choices[index]["extra"],
        }
        for index in sorted(choices)
    ]
    if has_usage:
        answer["usage"] = usage
    for key, value in top.items():
        if key not in answer:
            answer[key] = value
    return answer


# --------------------------------------------------------------------------- Anthropic assembly

_TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_MESSAGE_DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


def assemble_anthropic(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    """The ``message`` object a ``message_start`` ... ``message_stop`` stream adds up to."""
    try:
        return _assemble_anthropic(events)
    except (_Invalid, ValueError, TypeError, KeyError, AttributeError):
        return None


def _assemble_anthropic(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
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
            raise _Invalid("event is not an object")
        kind = obj.get("type") or event
        if kind == "ping":
            continue
        if kind == "error":
            return None
        if kind == "message_start":
            if message is not None:
                raise _Invalid("second message_start")
            message = copy.deepcopy(obj["message"])
            if not isinstance(message, dict):
                raise _Invalid("message")
            initial = list(message.get("content") or [])
            continue
        if message is None:
            raise _Invalid(f"{kind} before message_start")
        if kind == "content_block_start":
            index = obj["index"]
            block = copy.deepcopy(obj["content_block"])
            if not isinstance(index, int) or index in blocks or not isinstance(block, dict):
                raise _Invalid("content_block_start")
            blocks[index] = block
            open_blocks.add(index)
        elif kind == "content_block_delta":
            index = obj["index"]
            if index not in open_blocks:
                raise _Invalid("delta for a block not open")
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
                raise _Invalid(f"unknown delta {dtype!r}")
        elif kind == "content_block_stop":
            index = obj["index"]
            if index not in open_blocks:
                raise _Invalid("stop for a block not open")
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
            raise _Invalid(f"unknown event {kind!r}")
    if message is None or not stopped or open_blocks:
        return None
    message["content"] = initial + [blocks[i] for i in sorted(blocks)]
    return message


# --------------------------------------------------------------------------- recorder


class StreamRecorder:
    """Keeps a relayed SSE stream and assembles the complete answer from it.

    ``max_bytes``: past this many bytes fed the recording is abandoned (``result()``
    is ``None``) and nothing more is kept, so a huge stream costs no memory.
    """

    def __init__(self, dialect: str, *, max_bytes: int | None = None) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect = dialect
        self.max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self._memo: tuple[bytes | None] | None = None

    def feed(self, chunk: bytes) -> None:
        if self.overflow or not chunk:
            return
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.overflow = True
            self._chunks = []
            self._memo = None
            return
        self._chunks.append(bytes(chunk))
        self._memo = None

    def answer(self) -> dict[str, Any] | None:
        """The assembled answer as a dict (None when incomplete)."""
        if self.overflow:
            return None
        try:
            events = parse_sse(b"".join(self._chunks))  # one pass: no re-buffering per chunk
        except UnicodeDecodeError:
            return None
        if self.dialect == "openai":
            return assemble_openai(events)
        return assemble_anthropic(events)

    def result(self) -> bytes | None:
        """The complete non-streaming JSON answer (compact UTF-8), or None."""
        if self._memo is None:
            answer = self.answer()
            self._memo = (None if answer is None else _dumps(answer),)
        return self._memo[0]


# --------------------------------------------------------------------------- replay


def replay_sse(dialect: str, answer: bytes, include_usage: bool = False) -> list[bytes]:
    """The SSE events (one bytes object each) a live stream of ``answer`` would carry.

    ``include_usage`` (OpenAI only): the request asked
    ``stream_options.include_usage``; every chunk then carries ``"usage": null``
    and a last chunk with no choices carries the answer's usage. Anthropic
    streams always carry usage. Raises ``ValueError`` if ``answer`` is not a JSON
    answer object of the dialect.
    """
    obj = json.loads(answer)
    if not isinstance(obj, dict):
        raise ValueError("answer is not a JSON object")
    if dialect == "openai":
        return _replay_openai(obj, include_usage)
    if dialect == "anthropic":
        return _replay_anthropic(obj)
    raise ValueError(f"unknown dialect {dialect!r}")


def _sse_data(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _replay_openai(answer: dict[str, Any], include_usage: bool) -> list[bytes]:
    choices = answer.get("choices")
    if not isinstance(choices, list):
        raise ValueError("answer has no choices")
    base: dict[str, Any] = {}
    for key in ("id", "object", "created", "model"):
        if key == "object":
            base["object"] = "chat.completion.chunk"
        elif key in answer:
            base[key] = answer[key]
    for key, value in answer.items():
        if key not in base and key not in ("choices", "usage", "object"):
            base[key] = value
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: Any = None, logprobs: Any = None, **extra: Any) -> bytes:
        entry: dict[str, Any] = {"index": index, "delta": delta}
        if logprobs is not None:
            entry["logprobs"] = logprobs
        entry["finish_reason"] = finish
        entry.update(extra)
        return _sse_data({**base, "choices": [entry]})

    events: list[bytes] = []
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        message = dict(choice.get("message") or {})
        content = message.pop("content", _MISSING)
        refusal = message.pop("refusal", _MISSING)
        tool_calls = message.pop("tool_calls") if message.get("tool_calls") else []
        role = message.pop("role", "assistant")
        logprobs = choice.get("logprobs")
        extra = {
            k: v for k, v in choice.items() if k not in ("index", "message", "logprobs", "finish_reason")
        }

        first: dict[str, Any] = {"role": role}
        if content is not _MISSING:
            first["content"] = "" if isinstance(content, str) else content
        if refusal is not _MISSING:
            first["refusal"] = None
        events.append(chunk(index, first))
        # other message fields (annotations, audio, reasoning_content, function_call, ...)
        if message:
            events.append(chunk(index, message))
        if isinstance(content, str) and content:
            lp = None
            if isinstance(logprobs, dict):
                lp = logprobs
                logprobs = None
            events.append(chunk(index, {"content": content}, logprobs=lp))
        if isinstance(refusal, str):
            lp = None
            if isinstance(logprobs, dict):
                lp = logprobs
                logprobs = None
            events.append(chunk(index, {"refusal": refusal}, logprobs=lp))
        for position_call, call in enumerate(tool_calls):
            call = dict(call)
            function = dict(call.pop("function", None) or {})
            arguments = function.pop("arguments", None)
            head: dict[str, Any] = {"index": position_call}
            for key in ("id", "type"):
                if key in call:
                    head[key] = call.pop(key)
            head.update(call)
            head["function"] = {**function, "arguments": ""}
            events.append(chunk(index, {"tool_calls": [head]}))
            if arguments:
                events.append(chunk(index, {"tool_calls": [{"index": position_call, "function": {"arguments": arguments}}]}))
        events.append(chunk(index, {}, finish=choice.get("finish_reason"), logprobs=logprobs, **extra))
    if include_usage and answer.get("usage") is not None:
        events.append(_sse_data({**base, "choices": [], "usage": answer["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events


class _Missing:
    pass


_MISSING: Any = _Missing()


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode("ascii") + b"\ndata: " + _dumps({"type": kind, **obj}) + b"\n\n"


def _replay_anthropic(answer: dict[str, Any]) -> list[bytes]:
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
            partial = _dumps(block["input"]).decode("utf-8") if block["input"] else ""
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
