"""Focus recall: bring back compacted lines that the latest turn asks about.

The client resends its whole history with every request, so the originals of
compacted messages are in the request itself: that is the archive, and
nothing of it is stored again.  When the latest turn (a user's words, or the
calls the assistant is waiting on) names an identifier that the sent request
no longer holds but a compacted message does, the lines that name it come
back, verbatim, with the call or message they came from, in one recall
message.  A compacted message that names it is one hop from the focus on the
identifier graph, so recall runs when ``pruning_distance`` is at least 1.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Container, Sequence

from ..tokens import count_text
from .compaction import LINE_CHARS
from ..dialects.base import Message
from .text import MARKER_PREFIX, identifiers

MIN_NAME_CHARS = 4
LINES_PER_NAME = 3
MAX_NAMES = 12


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# What a name can hold: ASCII letters, digits and _./:- (identifiers), and
# non-ASCII bytes (\d matches other scripts' digits); every other byte ends a run.
RUN = re.compile(rb"[A-Za-z0-9_./:\-\x80-\xff]+")


class Archive:
    """The compacted messages' compact JSON (UTF-8), for finding the messages
    that hold a name.

    The first look-ups scan the texts joined by ``,`` (which no name holds).
    A replay looks up names at every step, so after ``INDEX_AFTER`` scans the
    archive is indexed: a name holds no byte outside ``RUN``'s class, so it
    occurs in a text only inside one of the text's maximal runs of that
    class; each message is split into its distinct runs once, and a name is
    searched for in the vocabulary of runs (joined by a newline, in chunks as
    messages are added), much shorter than texts that repeat the same words.
    A replay compacts more messages at each compaction and keeps the
    archive, adding only the new ones (:meth:`covers`, :meth:`add`)."""

    INDEX_AFTER = 16

    def __init__(self, texts: dict[int, bytes] | None = None):
        self.indices: set[int] = set()
        self._texts: dict[int, bytes] = {}
        self._joined: tuple[bytes, list[int], list[int]] | None = None   # (texts joined, starts, indices)
        self._scans = 0
        self._messages: dict[bytes, list[int]] | None = None   # run -> messages holding it, once indexed
        self._chunks: list[tuple[bytes, list[int], list[bytes]]] = []   # (joined runs, starts, runs)
        self._holding: dict[bytes, list[int]] = {}
        if texts:
            self.add(texts)

    def covers(self, indices) -> bool:
        return self.indices.issubset(indices)

    def add(self, texts: dict[int, bytes]) -> None:
        """Messages to archive as well (those already archived are skipped)."""
        new = {i: text for i, text in texts.items() if i not in self.indices}
        if not new:
            return
        self.indices.update(new)
        self._texts.update(new)
        self._joined = None
        self._holding.clear()
        if self._messages is not None:
            self._index(new)

    def _index(self, texts: dict[int, bytes]) -> None:
        new_runs: list[bytes] = []
        messages = self._messages
        for i, text in texts.items():
            for run in set(RUN.findall(text)):
                holding = messages.get(run)
                if holding is None:
                    messages[run] = [i]
                    new_runs.append(run)
                else:
                    holding.append(i)
        if new_runs:
            self._chunks.append((b"\n".join(new_runs), *_starts(new_runs), new_runs))

    def holding(self, name: bytes) -> list[int]:
        """Indices of the messages whose JSON holds ``name``, oldest first
        (remembered until messages are added: a replay asks again at later steps)."""
        found = self._holding.get(name)
        if found is not None:
            return found
        if not name or RUN.fullmatch(name) is None:
            raise ValueError(f"not a name: {name!r}")
        self._scans += 1
        if self._messages is None and self._scans > self.INDEX_AFTER:
            self._messages = {}
            self._index(self._texts)
        if self._messages is not None:
            found = set()
            for blob, starts, runs in self._chunks:
                for k in _finds(blob, starts, name):
                    found.update(self._messages[runs[k]])
        else:
            if self._joined is None:
                self._joined = (b",".join(self._texts.values()), *_starts(self._texts.values()), list(self._texts))
            blob, starts, order = self._joined
            found = {order[k] for k in _finds(blob, starts, name)}
        result = self._holding[name] = sorted(found)
        return result


def _starts(parts) -> tuple[list[int]]:
    """Where each part starts in the parts joined by one byte."""
    starts, at = [], 0
    for part in parts:
        starts.append(at)
        at += len(part) + 1
    return (starts,)


def _finds(blob: bytes, starts: list[int], name: bytes):
    """The parts (by position) of ``blob`` that hold ``name``, each once."""
    at = blob.find(name)
    while at >= 0:
        k = bisect_right(starts, at) - 1
        yield k
        end = starts[k + 1] if k + 1 < len(starts) else len(blob)
        at = blob.find(name, end)


def _origin(message: Message, call_of: Callable[[Message], str | None]) -> str:
    if message.role == "assistant":
        return "what the assistant wrote"
    call = call_of(message)
    if call:
        return f"the output of: {call.split(chr(10), 1)[0][:LINE_CHARS]}"
    return f"an earlier {message.role or 'message'}"


def recall_text(names_from: Sequence[str], sent: Container[bytes], archive: Callable[[], Archive],
                parse: Callable[[int], Message], call_of: Callable[[Message], str | None],
                budget_tokens: int, encoding: str, pruning_distance: int) -> str | None:
    """The recall message's text, or None when nothing needs to come back.

    ``names_from``: texts of the latest turn; ``sent``: what the request
    already carries before the latest turn, as compact JSON (UTF-8 bytes, or
    what answers ``in`` as they would);
    ``archive()``: the compacted messages' compact JSON (``parse`` reads
    one); ``call_of``: the call a result answers.
    Names are looked for in the UTF-8 bytes: a text holds a name exactly when
    its UTF-8 holds the name's, and a byte search is one C-speed pass."""
    if pruning_distance < 1 or budget_tokens <= 0:
        return None
    names = []
    for name in dict.fromkeys(name for text in names_from for name in identifiers(text)):
        if len(name) >= MIN_NAME_CHARS and _utf8(name) not in sent:
            names.append(name)
            if len(names) >= MAX_NAMES:
                break
    if not names:
        return None
    raw = archive()
    holding = {name: raw.holding(_utf8(name)) for name in names}
    names = [name for name in names if holding[name]]
    if not names:
        return None
    header = (f"{MARKER_PREFIX} recalled] Lines from earlier in this conversation that name what the "
              f"latest turn refers to, verbatim:")
    used = count_text(header, encoding)
    sections: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name in names:
        found = 0
        for message in (parse(i) for i in reversed(holding[name])):
            if name not in message.text:
                continue
            for line in message.text.split("\n"):
                stripped = line.strip()
                if name not in stripped or stripped in seen or len(stripped) > 4 * LINE_CHARS:
                    continue
                origin = _origin(message, call_of)
                cost = count_text(stripped, encoding) + 2 + (
                    0 if origin in sections else count_text(origin, encoding) + 2)
                if used + cost > budget_tokens:
                    break
                sections.setdefault(origin, []).append(stripped)
                seen.add(stripped)
                used += cost
                found += 1
                if found >= LINES_PER_NAME:
                    break
            if found >= LINES_PER_NAME:
                break
    if not sections:
        return None
    parts = [header]
    for origin, lines in sections.items():
        parts.append(f"- from {origin}:")
        parts.extend("    " + line for line in lines)
    return "\n".join(parts)
