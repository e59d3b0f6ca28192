"""The text utilities the rewrite shares: the marker of its own text, and the
identifiers (paths, dotted / snake / camel names, codes) that tie a line to
the conversation's focus."""
from __future__ import annotations

import re
from functools import lru_cache

MARKER_PREFIX = "[ctxwarden:"

_TERM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[./:-][A-Za-z0-9_]+)*|\d+(?:\.\d+)*")
_SPLIT_RE = re.compile(r"[./:-]")


def terms_of(text: str) -> dict:
    """Distinct terms (identifiers, their parts, numbers of 3+ digits) of a text, in
    first-seen order (a dict used as an ordered set)."""
    out: dict[str, int] = {}
    for tok in dict.fromkeys(_TERM_RE.findall(text)):
        if len(tok) < 3:
            continue
        out[tok] = 1
        # a name with a separator: what _TERM_RE matches is a (ASCII) Python
        # identifier exactly when it has none, and isidentifier is one C call
        if not tok.isidentifier() and not tok[0].isdigit():
            for part in _SPLIT_RE.split(tok):
                if len(part) >= 3:
                    out[part] = 1
    return out


MEMO_TERM_CHARS = 64   # longer terms are not memoised: the cache holds at most 65536 short keys


def is_salient(term: str) -> bool:
    """Structured identifiers: paths, dotted/snake/camel names, codes, long words."""
    return _salient(term) if len(term) <= MEMO_TERM_CHARS else _is_salient(term)


def _is_salient(term: str) -> bool:
    if term[0].isdigit():
        return len(term) >= 3
    if "/" in term or "." in term or "_" in term.strip("_"):
        return len(term) >= 4
    if any(c.isdigit() for c in term):
        return True
    if any(c.isupper() for c in term[1:]) and any(c.islower() for c in term):
        return True  # camelCase / CamelCase
    return len(term) >= 8


_salient = lru_cache(maxsize=65536)(_is_salient)


def identifiers(text: str) -> tuple[str, ...]:
    """Distinct salient identifiers of a text (paths, dotted / snake / camel
    names, codes, long words), in first-seen order."""
    return tuple(term for term in terms_of(text) if is_salient(term))
