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

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..dialects.base import SSEEvent, StreamInvalid, dumps

if TYPE_CHECKING:
    from ..dialects import Dialect

_EOL = re.compile(rb"\r\n|\r|\n")


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


# --------------------------------------------------------------------------- recorder


class StreamRecorder:
    """Keeps a relayed SSE stream and assembles the complete answer from it.

    ``max_bytes``: past this many bytes fed the recording is abandoned (``result()``
    is ``None``) and nothing more is kept, so a huge stream costs no memory.
    """

    def __init__(self, dialect: Dialect, *, max_bytes: int | None = None) -> None:
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
        try:
            return self.dialect.assemble_stream(events)
        except (StreamInvalid, ValueError, TypeError, KeyError, AttributeError):
            return None   # a stream that does not fit its dialect is never stored

    def result(self) -> bytes | None:
        """The complete non-streaming JSON answer (compact UTF-8), or None."""
        if self._memo is None:
            answer = self.answer()
            self._memo = (None if answer is None else dumps(answer),)
        return self._memo[0]


# --------------------------------------------------------------------------- replay


def replay_sse(dialect: Dialect, answer: bytes, include_usage: bool = False) -> list[bytes]:
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
    return dialect.replay_stream(obj, include_usage)
