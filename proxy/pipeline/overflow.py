"""When the latest turn alone exceeds the budget: cut its tool output.

A pending tool output of 40k tokens cannot be compacted away (the model must
see its answer), so it is cut to its head, its tail and the lines that name
what the focus names, with a marker that says how many lines were left out.
The system prompt and the latest user message are never cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..tokens import count_text
from ..dialects.base import Message, with_segments
from .text import MARKER_PREFIX, identifiers

MIN_KEPT_TOKENS = 64
MARKER_TOKENS = 10


def cut_text(text: str, max_tokens: int, focus: frozenset[str], encoding: str) -> str:
    """``text`` within about ``max_tokens``: head and tail lines (a third each),
    then lines naming the focus, in their order, with omission markers."""
    if count_text(text, encoding) <= max_tokens:
        return text
    lines = text.split("\n")
    if len(lines) < 4:
        keep = max(100, max_tokens)  # about two characters a token on each side
        return f"{text[:keep]}\n{MARKER_PREFIX} {len(text) - 2 * keep} characters omitted]\n{text[-keep:]}"
    costs = [count_text(line, encoding) + 1 for line in lines]
    keep: set[int] = set()
    used = 0
    side = max_tokens // 3
    for order in (range(len(lines)), range(len(lines) - 1, -1, -1)):
        spent = 0
        for i in order:
            if i in keep or spent + costs[i] > side:
                break
            keep.add(i)
            spent += costs[i]
        used += spent
    if focus:
        for i, line in enumerate(lines):
            # each kept line may open a gap whose marker costs about MARKER_TOKENS
            if i not in keep and used + costs[i] + MARKER_TOKENS <= max_tokens - MARKER_TOKENS \
                    and focus.intersection(identifiers(line)):
                keep.add(i)
                used += costs[i] + MARKER_TOKENS
    out: list[str] = []
    gap = 0
    for i, line in enumerate(lines):
        if i in keep:
            if gap:
                out.append(f"{MARKER_PREFIX} {gap} lines omitted]")
                gap = 0
            out.append(line)
        else:
            gap += 1
    if gap:
        out.append(f"{MARKER_PREFIX} {gap} lines omitted]")
    return "\n".join(out)


def cut_message(message: Message, max_tokens: int, focus_texts: Iterable[str], encoding: str,
                count_tokens: Callable[[Any], int], editable: Callable[[tuple], bool] = lambda path: True) -> Message:
    """``message`` with its ``editable`` texts (by path) cut to about
    ``max_tokens`` in all, each in proportion to its size, recounted with
    ``count_tokens``; unchanged when it has none."""
    if not message.segments or message.unknown:
        return message
    focus = frozenset(name for text in focus_texts for name in identifiers(text))
    sizes = [count_text(text, encoding) if editable(path) else 0 for path, text in message.segments]
    excess = message.tokens - max_tokens
    total = sum(sizes)
    if excess <= 0 or not total:
        return message
    texts = []
    for (_, text), size in zip(message.segments, sizes):
        share = max(MIN_KEPT_TOKENS, size - (excess * size + total - 1) // total)
        texts.append(cut_text(text, share, focus, encoding) if size and share < size else text)
    return with_segments(message, tuple(texts), count_tokens)
