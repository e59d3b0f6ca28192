"""Token counting: encodings, memoised text counts, and what the dialects share
(image sizes read from a data header).  How each provider bills a request's
messages, tools and images is its dialect's (``dialects/*/tokens.py``).

Counting is memoised per string (bounded cache), so recounting a conversation
that grew by one turn only encodes the new text.  Special-token text such as
``<|endoftext|>`` is encoded as ordinary text and never raises.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

import tiktoken
from cachetools import LRUCache

from .encodings import BUNDLED, EncodingFileError, canonical, load_bundled

# Counts for models that neither the config nor the built-in table
# (proxy/models.py) give an encoding.
DEFAULT_ENCODING = "cl100k_base"


_encodings: dict[str, tiktoken.Encoding] = {}
_enc_lock = threading.Lock()


def _load(name: str) -> tiktoken.Encoding:
    if name in BUNDLED:
        return load_bundled(name)
    return tiktoken.get_encoding(name)


def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Load a tiktoken encoding once and cache it.

    The shipped encodings (``proxy/encodings.py``) load offline, their
    published SHA-256 checked: a file that fails the check raises
    :class:`EncodingFileError`.  Any other name that cannot be loaded (unknown,
    or one tiktoken would have to download with no network) falls back to
    ``DEFAULT_ENCODING`` with a logged warning, so counting never fails.
    """
    name = canonical(name)
    enc = _encodings.get(name)
    if enc is None:
        with _enc_lock:
            enc = _encodings.get(name)
            if enc is None:
                try:
                    enc = _load(name)
                except EncodingFileError:
                    raise
                except Exception:  # noqa: BLE001 - ValueError, network errors...
                    if name == DEFAULT_ENCODING:
                        raise
                    logging.getLogger(__name__).warning(
                        "tiktoken encoding %r unavailable; counting with %r instead", name, DEFAULT_ENCODING)
                    enc = _encodings.get(DEFAULT_ENCODING) or _load(DEFAULT_ENCODING)
                    _encodings[DEFAULT_ENCODING] = enc
                _encodings[name] = enc
    return enc


class _CountCache:
    """Token counts by text, bounded by the bytes its keys hold.

    Texts up to SHORT characters are keyed by themselves; longer ones by
    their length and a blake2b digest, so no request text is kept alive.
    With MAX_BYTES the cache holds at most about 16 MiB of keys (each entry
    is charged its key's characters plus OVERHEAD bytes of Python objects)."""

    SHORT = 256
    OVERHEAD = 200
    MAX_BYTES = 16 * 1024 * 1024

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._data: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=self._size)
        self._lock = threading.Lock()

    @classmethod
    def _size(cls, value: tuple) -> int:
        return value[1] + cls.OVERHEAD

    def key(self, text: str, encoding: str) -> Any:
        if len(text) <= self.SHORT:
            return (encoding, text)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return (encoding, len(text), digest)

    def get(self, key: Any) -> int | None:
        with self._lock:
            hit = self._data.get(key)
            return None if hit is None else hit[0]

    def put(self, key: Any, value: int) -> None:
        # the value carries the size its key is charged (characters of a short key)
        size = len(key[1]) if isinstance(key[1], str) else 16
        with self._lock:
            self._data[key] = (value, size)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_cache = _CountCache()


def count_text(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Number of tokens of ``text`` (special tokens treated as plain text). Memoised."""
    if not text:
        return 0
    key = _cache.key(text, encoding)
    n = _cache.get(key)
    if n is None:
        enc = get_encoding(encoding)
        try:
            n = len(enc.encode_ordinary(text))
        except UnicodeEncodeError:  # lone surrogates
            n = len(enc.encode_ordinary(text.encode("utf-8", "replace").decode("utf-8")))
        _cache.put(key, n)
    return n


def clear_cache() -> None:
    _cache.clear()


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def count_json(value: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of a value rendered as compact JSON (strings counted as themselves)."""
    if isinstance(value, str):
        return count_text(value, encoding)
    if value is None:
        return 0
    try:
        return count_text(compact_json(value), encoding)
    except (TypeError, ValueError):
        return count_text(str(value), encoding)


# ---------------------------------------------------------------- image sizes

def _image_size_from_bytes(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WEBP or JPEG header, else None."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return int(w & 0x3FFF), int(h & 0x3FFF)
            if chunk == b"VP8L":
                b = data[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return w, h
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
            return None
        if data[:2] == b"\xff\xd8":
            i = 2
            n = len(data)
            while i + 9 < n:
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return int(w), int(h)
                i += 2 + seg_len
    except (struct.error, IndexError):
        return None
    return None


def b64_image_size(b64: str) -> tuple[int, int] | None:
    if not isinstance(b64, str) or not b64:
        return None
    # the header is at the front; JPEG frames may sit a little further in
    head = b64[:87384]
    head = head[: len(head) - (len(head) % 4)]
    try:
        data = base64.b64decode(head, validate=False)
    except (ValueError, TypeError):
        return None
    return _image_size_from_bytes(data)


def data_url_size(url: Any) -> tuple[int, int] | None:
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    comma = url.find(",")
    if comma < 0 or ";base64" not in url[:comma]:
        return None
    return b64_image_size(url[comma + 1:])


def count_content(content: Any, encoding: str, count_item: Callable[[Any, str], int]) -> int:
    """Tokens of a message's content: a string, or a list whose items ``count_item`` prices."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, encoding)
    if isinstance(content, list):
        return sum(count_item(item, encoding) for item in content)
    return count_json(content, encoding)
