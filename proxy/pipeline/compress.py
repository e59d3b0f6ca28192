"""Stage 3: compress what is kept but not critical.

* ANSI escape codes stripped, carriage-return progress lines collapsed,
  trailing whitespace and runs of blank lines / inner whitespace folded
  (leading indentation is kept: it carries meaning in code);
* a text that is entirely JSON is minified;
* exact duplicates (the same output twice) -> a short note pointing at the
  later, kept copy; near duplicates (the same file read again after a small
  edit) -> a note plus only the lines the kept copy does not have.  Candidates
  come from a line-sketch index (the few lines with the smallest CRC), so no
  pairwise comparison of all outputs;
* long texts keep head and tail plus the lines most relevant to the focus,
  with an explicit "[ctxwarden: N lines omitted]" marker per gap.  Important
  messages are trimmed lightly, supporting ones hard.

Critical messages, messages of unknown shape and opaque parts are never touched.
"""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from functools import lru_cache

from .classify import focus_terms
from .model import MARKER_PREFIX, Message, with_segments
from .plan import RewritePlan

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CR_LINE_RE = re.compile(r"[^\n]*\r(?!\n)")
_TRAILING_WS_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN_RE = re.compile(r"\n{3,}")
_INNER_WS_RE = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_LINE_TERM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d{2,}")

# per level: (min lines before trimming, head, tail, relevant lines cap, relevant share, max chars per line)
LEVELS = {
    "lossless": (10**9, 0, 0, 0, 0.0, 4000),
    "light": (80, 25, 25, 40, 0.25, 1200),
    "heavy": (16, 3, 3, 24, 0.08, 400),
    "minimal": (8, 2, 2, 6, 0.0, 200),
}

IMPORTANT_LEVEL = "lossless"
ASSISTANT_LEVEL = "light"
RECENT_SUPPORTING_FACTOR = 0
DEDUP_MIN_CHARS = 300
NEAR_MIN_LINES = 8
NEAR_CONTAINMENT = 0.7
NEAR_MAX_UNIQUE = 40


@lru_cache(maxsize=4096)
def fold_text(text: str) -> str:
    """Strip ANSI codes, collapse CR progress lines, fold whitespace runs."""
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            text = _CR_LINE_RE.sub("", text)
    text = _TRAILING_WS_RE.sub("", text)
    text = _BLANK_RUN_RE.sub("\n\n", text)
    text = _INNER_WS_RE.sub(" ", text)
    return text


def minify_json(text: str) -> str:
    """Compact JSON when the whole text is a JSON object or array; else unchanged."""
    s = text.strip()
    if len(s) < 40 or s[0] not in "{[" or s[-1] not in "}]":
        return text
    try:
        value = json.loads(s)
    except ValueError:
        return text
    out = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return out if len(out) < len(text) else text


def _cut_line(line: str, max_chars: int) -> str:
    if len(line) <= max_chars:
        return line
    keep = max_chars // 2
    return f"{line[:keep]} [ctxwarden: {len(line) - 2 * keep} chars omitted] {line[-keep:]}"


def _line_score(line: str, weights: dict) -> float:
    if not weights:
        return 0.0
    get = weights.get
    return sum([get(t, 0.0) for t in dict.fromkeys(_LINE_TERM_RE.findall(line))])


def select_lines(text: str, weights: dict, level: str) -> str:
    """Head + tail + the lines most relevant to the focus, with omission markers."""
    min_lines, head, tail, cap, share, max_chars = LEVELS[level]
    lines = text.split("\n")
    n = len(lines)
    if n <= min_lines:
        if any(len(x) > max_chars for x in lines):
            return "\n".join(_cut_line(x, max_chars) for x in lines)
        return text
    budget = min(cap, max(int(share * n), 0)) if share else cap
    middle = range(head, n - tail)
    scored = []
    for i in middle:
        s = _line_score(lines[i], weights)
        if s > 0.0:
            scored.append((-s, i))
    scored.sort()
    keep = set(range(head)) | set(range(n - tail, n))
    for _, i in scored[:budget]:
        keep.add(i)
    out = []
    gap = 0
    for i in range(n):
        if i in keep:
            if gap:
                out.append(f"[ctxwarden: {gap} lines omitted]")
                gap = 0
            out.append(_cut_line(lines[i], max_chars))
        else:
            gap += 1
    if gap:
        out.append(f"[ctxwarden: {gap} lines omitted]")
    return "\n".join(out)


def _sketch(lines: frozenset) -> tuple:
    keyed = sorted((zlib.crc32(x.encode("utf-8", "surrogatepass")), x) for x in lines)
    return tuple(x for _, x in keyed[:4])


def _line_set(text: str) -> frozenset:
    return frozenset(x.strip() for x in text.split("\n") if len(x.strip()) >= 4)


def _dedupe(messages: list, counters: dict, encoding: str) -> None:
    """Replace earlier exact/near duplicate segments by notes (in place on the list)."""
    seen_exact: dict[str, int] = {}
    sketch_index: dict[str, list] = {}
    for pos in range(len(messages) - 1, -1, -1):
        m = messages[pos]
        if m.action in ("pruned", "dropped") or not m.segments and m.tier != "critical":
            continue
        editable = m.tier not in ("critical",) and not m.unknown and m.segments
        texts = []
        changed = False
        segs = m.segments if m.segments else ()
        for path, text in segs:
            key = fold_text(text).strip() if len(text) >= DEDUP_MIN_CHARS else None
            if key is None:
                texts.append(text)
                continue
            if editable and key in seen_exact:
                texts.append(f"{MARKER_PREFIX} same content as in a later message; omitted]")
                changed = True
                counters["exact"] += 1
                continue
            seen_exact[key] = pos
            lines = _line_set(key)
            if editable and len(lines) >= NEAR_MIN_LINES:
                best = None
                for probe in _sketch(lines):
                    for other in sketch_index.get(probe, ()):
                        inter = len(lines & other)
                        c = inter / len(lines)
                        if c >= NEAR_CONTAINMENT and (best is None or c > best[0]):
                            best = (c, other)
                if best is not None:
                    other = best[1]
                    unique = []
                    seen_u = set()
                    for line in key.split("\n"):
                        s = line.strip()
                        if len(s) >= 4 and s not in other and s not in seen_u:
                            seen_u.add(s)
                            unique.append(line)
                    if len(unique) <= NEAR_MAX_UNIQUE:
                        note = (f"{MARKER_PREFIX} nearly the same as a later message "
                                f"({len(lines) - len(unique)} of {len(lines)} lines shared)")
                        note += "; lines only here:]\n" + "\n".join(unique) if unique else "; omitted]"
                        texts.append(note)
                        changed = True
                        counters["near"] += 1
                        continue
            if len(lines) >= NEAR_MIN_LINES:
                for probe in _sketch(lines):
                    sketch_index.setdefault(probe, []).append(lines)
            texts.append(text)
        if changed:
            messages[pos] = with_segments(m, tuple(texts), encoding, "deduplicated")


def compress_text(text: str, level: str, weights: dict) -> str:
    if text.startswith(MARKER_PREFIX):
        return text
    out = fold_text(text)
    out = minify_json(out)
    return select_lines(out, weights, level)


def compress_message(m: Message, level: str, weights: dict, encoding: str) -> Message:
    """Compress the editable segments of one message at ``level``."""
    if not m.segments or m.unknown or m.tier == "critical":
        return m
    texts = tuple(compress_text(t, level, weights) for _, t in m.segments)
    before_lines = sum(t.count("\n") for _, t in m.segments)
    after_lines = sum(t.count("\n") for t in texts)
    if m.action == "deduplicated":
        action = "deduplicated"
    else:
        action = "truncated" if after_lines < before_lines - 1 else "compressed"
    new = with_segments(m, texts, encoding, action)
    if new.tokens >= m.tokens:
        return m
    return new


def compress(messages: tuple, plan: RewritePlan, weights: dict | None = None) -> tuple:
    """Compress non-critical kept messages. Returns (messages, report)."""
    if weights is None:
        weights = focus_terms(messages)
    work = list(messages)
    counters = {"exact": 0, "near": 0}
    _dedupe(work, counters, plan.encoding)
    out = []
    before = sum(m.tokens for m in messages if m.action not in ("pruned", "dropped"))
    # recency rank of supporting units: the nearer ones are trimmed lightly, older ones hard
    supporting_units = sorted({m.unit for m in work if m.tier == "supporting"}, reverse=True)
    recent_rank = {u: r for r, u in enumerate(supporting_units)}
    near = RECENT_SUPPORTING_FACTOR * max(1, plan.pruning_distance)
    for m in work:
        if m.action in ("pruned", "dropped") or m.tier == "critical":
            out.append(m)
            continue
        if m.tier in ("important", "cache"):
            level = IMPORTANT_LEVEL
        elif m.role == "assistant" or recent_rank.get(m.unit, near) < near:
            level = ASSISTANT_LEVEL   # the agent's own reasoning and code: what it recalls most
        else:
            level = "heavy"
        out.append(compress_message(m, level, weights, plan.encoding))
    after = sum(m.tokens for m in out if m.action not in ("pruned", "dropped"))
    return tuple(out), {"stage": "compress", "duplicates": counters["exact"],
                        "near_duplicates": counters["near"], "tokens_before": before,
                        "tokens_after": after}


def replace_action(m: Message, action: str) -> Message:
    return dataclasses.replace(m, action=action)
