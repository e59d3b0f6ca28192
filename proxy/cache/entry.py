"""The stored form of a cached answer.

Wire form (``to_bytes``): one JSON header line, a newline, then the body bytes
unchanged::

    {"v":1,"status":200,"content_type":"application/json","dialect":"openai","created":1712345678.5}\\n
    {"id":"chatcmpl-...","object":"chat.completion",...}

The body is always the complete *non-streaming* JSON answer (a streamed answer is
assembled by :class:`ctxwarden.cache.sse.StreamRecorder` before it is stored), so one
entry serves both forms: as is for JSON clients, through
:func:`ctxwarden.cache.sse.replay_sse` for streaming ones. ``from_bytes`` raises
``ValueError`` for anything it does not recognise (another version, garbage);
callers treat that as a miss.

Size limit: :data:`MAX_ANSWER_BYTES` (8 MiB). An answer is stored only when
the bytes relayed for it (compressed or not, SSE or JSON) and its decoded JSON
each stay within it; a larger answer is relayed to the client chunk by chunk
and not stored, and the cache step stops reading (and decompressing) it as soon
as the limit is passed. Coalesced followers share the same bound
(:mod:`ctxwarden.cache.coalesce`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

__all__ = ["FORMAT_VERSION", "MAX_ANSWER_BYTES", "CachedAnswer"]

FORMAT_VERSION = 1

#: The largest answer the response cache keeps (and buffers on its way), in bytes.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class CachedAnswer:
    status: int
    content_type: str
    body: bytes
    dialect: str
    created: float

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "v": FORMAT_VERSION,
                "status": self.status,
                "content_type": self.content_type,
                "dialect": self.dialect,
                "created": self.created,
            },
            separators=(",", ":"),
            ensure_ascii=True,  # no raw newline can appear in the header line
        ).encode("ascii")
        return header + b"\n" + bytes(self.body)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CachedAnswer":
        data = bytes(data)
        header, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("cached answer: no header line")
        try:
            meta = json.loads(header)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cached answer: bad header ({exc})") from None
        if not isinstance(meta, dict) or meta.get("v") != FORMAT_VERSION:
            raise ValueError(f"cached answer: unsupported format {meta.get('v') if isinstance(meta, dict) else meta!r}")
        try:
            status = meta["status"]
            content_type = meta["content_type"]
            dialect = meta["dialect"]
            created = meta["created"]
        except KeyError as exc:
            raise ValueError(f"cached answer: header lacks {exc}") from None
        if (
            isinstance(status, bool)
            or not isinstance(status, int)
            or not isinstance(content_type, str)
            or not isinstance(dialect, str)
            or isinstance(created, bool)
            or not isinstance(created, (int, float))
        ):
            raise ValueError("cached answer: header has wrong types")
        return cls(status=status, content_type=content_type, body=body, dialect=dialect, created=float(created))

    def age(self, now: float | None = None) -> int:
        """Whole seconds since the answer was stored (for an ``Age`` header); ``created`` is wall-clock time."""
        return max(0, int((time.time() if now is None else now) - self.created))
