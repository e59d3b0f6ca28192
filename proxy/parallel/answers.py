"""A task's answer: the raw HTTP answer decoded (its text, which placeholders
get, is the dialect's ``answer_text``)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

try:  # optional decoders, used when installed (as httpx does)
    import brotli as _brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None
try:
    import zstandard as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _zstd = None

#: the most bytes a task's answer may take once decoded (gzip etc.); a larger
#: answer makes the task fail instead of being inflated without bound
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class AnswerUnreadable(ValueError):
    """A task's answer body could not be decoded (unknown or broken
    Content-Encoding, or larger than the limit once decoded)."""


@dataclass(frozen=True)
class TaskAnswer:
    """What ``run_one`` returns for one task."""

    status: int
    #: the parsed JSON body (or None when it was not JSON)
    body: Any = None
    tokens_before: int | None = None
    tokens_after: int | None = None
    #: x-ctxwarden-cache: hit | miss | bypass, when known
    cache: str | None = None
    #: an explanation to report when status is not 2xx (else taken from the body);
    #: set with a 2xx status, it makes the task fail (an answer that could not be read)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300 and self.error is None

    @classmethod
    def from_http(cls, status: int, content: bytes | str | None, headers: Mapping[str, str] | None = None, *,
                  max_bytes: int = MAX_ANSWER_BYTES) -> TaskAnswer:
        """From a raw HTTP answer, as it came on the wire: decodes the body by
        its ``Content-Encoding`` (gzip, deflate, identity; br and zstd when
        their module is installed), at most ``max_bytes`` decoded, parses it as
        JSON and reads the ``x-ctxwarden-tokens-before/-after`` and
        ``x-ctxwarden-cache`` headers.

        A 2xx answer whose body cannot be decoded or is not JSON gets ``error``
        set (the task then fails rather than report ``ok`` with no answer)."""
        h = {str(k).lower(): v for k, v in (headers or {}).items()}
        body: Any = None
        error: str | None = None
        if content:
            try:
                if isinstance(content, str):
                    content = content.encode("utf-8", "surrogatepass")
                body = json.loads(decode_content(content, h.get("content-encoding"), max_bytes))
            except AnswerUnreadable as exc:
                error = f"upstream answered {status} with a body that could not be read: {exc}"
            except (ValueError, UnicodeDecodeError):
                if 200 <= status < 300:
                    error = f"upstream answered {status} with a body that is not JSON"
        elif 200 <= status < 300:
            error = f"upstream answered {status} with an empty body"
        return cls(status=status, body=body, tokens_before=_int_or_none(h.get("x-ctxwarden-tokens-before")),
                   tokens_after=_int_or_none(h.get("x-ctxwarden-tokens-after")), cache=h.get("x-ctxwarden-cache"),
                   error=error)

    def error_message(self) -> str:
        """Why the task failed: ``error``, else the status and the upstream's own message."""
        if self.error:
            return self.error
        msg = None
        if isinstance(self.body, dict):
            err = self.body.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                msg = err["message"]
            elif isinstance(err, str):
                msg = err
        return f"upstream answered {self.status}" + (f": {msg}" if msg else "")


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def decode_content(content: bytes, encoding: str | None, max_bytes: int = MAX_ANSWER_BYTES) -> bytes:
    """``content`` with its ``Content-Encoding`` undone (the codings listed are
    undone last first); raise :class:`AnswerUnreadable` for an unknown or broken
    coding, or when the decoded body would exceed ``max_bytes`` (decoding stops
    there: a small compressed answer cannot expand without bound)."""
    codings = [c.strip().lower() for c in (encoding or "").split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        try:
            content = _undo(coding, content, max_bytes)
        except AnswerUnreadable:
            raise
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError
            raise AnswerUnreadable(f"broken {coding} body ({exc})") from exc
    if len(content) > max_bytes:
        raise AnswerUnreadable(f"the answer is larger than {max_bytes} bytes")
    return content


def _undo(coding: str, content: bytes, max_bytes: int) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return _inflate(content, 16 + zlib.MAX_WBITS, max_bytes, members=True)
    if coding == "deflate":  # zlib-wrapped per the RFC; some servers send it raw
        try:
            return _inflate(content, zlib.MAX_WBITS, max_bytes)
        except zlib.error:
            return _inflate(content, -zlib.MAX_WBITS, max_bytes)
    if coding == "br" and _brotli is not None:
        return _bounded(_brotli.decompress(content), max_bytes)
    if coding == "zstd" and _zstd is not None:
        return _bounded(_zstd.ZstdDecompressor().decompress(content, max_output_size=max_bytes + 1), max_bytes)
    raise AnswerUnreadable(f"unsupported Content-Encoding {coding!r}")


def _bounded(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise AnswerUnreadable(f"the answer is larger than {max_bytes} bytes once decoded")
    return data


def _inflate(data: bytes, wbits: int, max_bytes: int, *, members: bool = False) -> bytes:
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        buf = data
        while not d.eof:
            # max_length >= 1 here (0 would mean "no limit")
            chunk = d.decompress(buf, max_bytes + 1 - len(out))
            out += chunk
            _bounded(out, max_bytes)
            buf = d.unconsumed_tail
            if not chunk and not buf:
                raise zlib.error("the compressed body ends early")
        data = d.unused_data
        if not members or not data.strip(b"\0"):  # trailing NULs after gzip members are padding
            return bytes(out)
