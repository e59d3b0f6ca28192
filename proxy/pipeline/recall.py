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

from bisect import bisect_right
from collections.abc import Callable, Sequence

from ..tokens import count_text
from .compaction import LINE_CHARS
from ..dialects.base import Message
from .text import MARKER_PREFIX, identifiers

MIN_NAME_CHARS = 4
LINES_PER_NAME = 3
MAX_NAMES = 12


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class Archive:
    """The compacted messages' compact JSON (UTF-8) by index, oldest first,
    joined into one text with ``,`` (which no name holds), so the messages
    holding a name are found by C-speed searches."""

    def __init__(self, texts: dict[int, bytes]):
        self.indices = list(texts)
        self.starts: list[int] = []
        at = 0
        for text in texts.values():
            self.starts.append(at)
            at += len(text) + 1
        self.blob = b",".join(texts.values())
        self._holding: dict[bytes, list[int]] = {}

    def holding(self, name: bytes) -> list[int]:
        """Indices of the messages whose JSON holds ``name``, oldest first
        (remembered: a replay asks again at later steps)."""
        found = self._holding.get(name)
        if found is not None:
            return found
        found = self._holding[name] = []
        at = self.blob.find(name)
        while at >= 0:
            k = bisect_right(self.starts, at) - 1
            found.append(self.indices[k])
            end = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.blob)
            at = self.blob.find(name, end)
        return found


def _origin(message: Message, call_of: Callable[[Message], str | None]) -> str:
    if message.role == "assistant":
        return "what the assistant wrote"
    call = call_of(message)
    if call:
        return f"the output of: {call.split(chr(10), 1)[0][:LINE_CHARS]}"
    return f"an earlier {message.role or 'message'}"


def recall_text(names_from: Sequence[str], sent: bytes, archive: Callable[[], Archive],
                parse: Callable[[int], Message], call_of: Callable[[Message], str | None],
                budget_tokens: int, encoding: str, pruning_distance: int) -> str | None:
    """The recall message's text, or None when nothing needs to come back.

    ``names_from``: texts of the latest turn; ``sent``: what the request
    already carries before the latest turn, as compact JSON (UTF-8 bytes);
    ``archive()``: the compacted messages' compact JSON (``parse`` reads one); ``call_of``: the call a result answers.
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
