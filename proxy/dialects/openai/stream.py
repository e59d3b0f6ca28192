"""OpenAI Chat Completions streams: a ``chat.completion.chunk`` stream assembled
into the ``chat.completion`` it adds up to, and a stored answer replayed as one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from ..base import SSEEvent, StreamInvalid, dumps


# string fields that name or tag something: a repeat replaces (or is dropped), never appends
_SET_KEYS = frozenset({"id", "type", "name", "role", "index", "object", "expires_at"})


def _merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Merge one streamed delta into the accumulated object (SDK accumulate_delta rules)."""
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            calls = acc.setdefault("tool_calls", {})
            if not isinstance(calls, dict):
                raise StreamInvalid("tool_calls")
            for part in value:
                if not isinstance(part, dict):
                    raise StreamInvalid("tool_call delta")
                index = part.get("index", len(calls))
                if isinstance(index, bool) or not isinstance(index, int):
                    raise StreamInvalid("tool_call index")
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


def assemble_stream(events: Iterable[SSEEvent]) -> dict[str, Any] | None:
    """The ``chat.completion`` object a stream of ``chat.completion.chunk`` events adds up to.
    None when it did not finish; raises on what does not fit (see cache.sse.StreamRecorder)."""
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
            raise StreamInvalid("chunk is not an object")
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
                raise StreamInvalid("choice")
            index = choice.get("index", 0)
            if isinstance(index, bool) or not isinstance(index, int):
                raise StreamInvalid("choice index")
            state = choices.setdefault(index, {"message": {}, "finish_reason": None, "logprobs": None, "extra": {}})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                _merge(state["message"], delta)
            elif delta is not None:
                raise StreamInvalid("delta")
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
    answer = _head(top, "chat.completion")
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


def _head(source: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fields an answer and its chunks open with, in the API's order, as ``kind``."""
    head: dict[str, Any] = {}
    for key in ("id", "object", "created", "model"):
        if key == "object":
            head["object"] = kind
        elif key in source:
            head[key] = source[key]
    return head


class _Missing:
    pass


_MISSING: Any = _Missing()


def _sse_data(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def replay_stream(answer: dict[str, Any], include_usage: bool = False) -> list[bytes]:
    """The events of a live stream of ``answer``; ``include_usage``: the request asked
    ``stream_options.include_usage`` (every chunk carries ``usage: null``, a last one the usage)."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        raise ValueError("answer has no choices")
    base = _head(answer, "chat.completion.chunk")
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
