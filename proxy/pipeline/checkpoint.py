"""Stable-prefix checkpoints: compact the old part once, keep the tail as it grows.

Provider prompt caches bill a byte-identical prefix at a fraction of the
price, so the rewrite of turn n+1 must start, byte for byte, with the rewrite
of turn n.  This module splits a request at a *checkpoint boundary* and
rewrites the two sides with functions that never look across it:

boundary    with E = ``plan.every_tokens``: the last unit start (an assistant
            message, so a tool call never leaves its results) at or below
            k*E cumulative message tokens, k = floor(total / E).  It only
            moves when the conversation crosses the next multiple of E.
old part    every message before the boundary.  :func:`compact` turns it into
            the pinned messages (system/developer messages, the opening user
            message that states the task, and the latest user message when it
            lies here) plus ONE ctxwarden note of about C = ``plan.target_tokens``
            tokens: a step log (each call or command with the first/last/error
            lines of its result; steps near the old part's end and the task get
            more lines, chosen by relevance to them; far steps are dropped
            first) and a digest of the identifiers and figures the removed
            messages established.  It is a pure function of the old part and a
            few plan figures, so it is identical on every turn until the next
            checkpoint and can be cached under :func:`checkpoint_key`.
tail        every message from the boundary on.  :func:`compress_tail` applies
            only focus-INDEPENDENT, per-message compression, and only to texts
            longer than budget/8 tokens (folded, JSON-minified, cut to head +
            tail with an explicit marker) or exact duplicates of EARLIER tail
            text (a reference note), so appending a turn never changes earlier
            bytes.  Critical messages (the pending unit, the latest user
            message) are untouched; such a very long text is therefore cut once,
            on the turn after it stopped being pending.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache

from ..tokens import count_message_tokens, count_text
from .compress import _ANSI_RE, fold_text, minify_json
from .model import MARKER_PREFIX, Message, is_salient
from .plan import RewritePlan
from .prune import hop_distances

VERSION = "ctxwarden-checkpoint-1"

# ---- tuning (general figures, no corpus-specific strings) ----
NOTE_FLOOR = 0.5           # the note gets at least this share of C, however long the task statement
STEP_SHARE = 0.2          # of the note budget for the step log; the rest for the identifier digest
CALL_CHARS = 160           # a call / command summary is cut to this many characters
LINE_CHARS = 140           # a result line in the step log is cut to this many characters
NEAR_RECENT_UNITS = 12     # ... among the last this many units of the old part
MAX_SCORED_LINES = 400     # lines of one result scored for relevance
NEAR_EXTRA_LINES = 4       # extra relevant result lines for steps near the focus
TAIL_MAX_DIVISOR = 8       # a non-critical tail text above budget/8 tokens is cut to head + tail
TAIL_MIN_SAVING = 64       # a tail message is only rewritten if that saves at least this many tokens
DEDUP_MIN_CHARS = 300

# words that mark a line reporting a problem (matched case-insensitively at a word start)
ERROR_WORDS = ("error", "exception", "traceback", "fail", "warning", "denied", "not found", "no such",
               "cannot", "unable", "invalid", "assert", "abort", "fatal")


def _last_error_pos(text: str) -> int:
    """Position of the last problem word in ``text`` (-1: none); str.rfind, no regex scan."""
    low = text.lower()
    best = -1
    for word in ERROR_WORDS:
        end = len(low)
        while True:
            pos = low.rfind(word, best + 1, end)
            if pos < 0:
                break
            if (pos == 0 or not (low[pos - 1].isalnum() or low[pos - 1] == "_")
                    or (text[pos].isupper() and text[pos - 1].islower())):   # ValueError, AssertionFailed
                best = pos
                break
            end = pos + len(word) - 1
    return best
_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)
_FACT_TERM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[./:-][A-Za-z0-9_]+)*|\d+(?:\.\d+)*")


@dataclass(frozen=True)
class Split:
    boundary: int               # old part = messages[:boundary], tail = messages[boundary:]
    k: int                      # which checkpoint (boundary at or below k*E)
    every: int                  # E
    target: int                 # C
    latest_user_in_old: bool    # OpenAI only: the latest user message lies in the old part


def find_split(conv, plan: RewritePlan) -> Split | None:
    """Where the checkpoint boundary of this request lies, or None when no checkpoint applies."""
    E = plan.every_tokens
    if E <= 0 or not conv.structure_ok:
        return None
    msgs = conv.messages
    n = len(msgs)
    if n < 3:
        return None
    cum = [0] * (n + 1)
    for i, m in enumerate(msgs):
        cum[i + 1] = cum[i] + m.tokens
    k = cum[n] // E
    if k < 1:
        return None
    limit = k * E
    first_unknown = next((i for i, m in enumerate(msgs) if m.unknown), n)
    latest_user = conv.latest_user
    for p in range(n - 1, 0, -1):
        if cum[p] > limit:
            continue
        m = msgs[p]
        if m.role != "assistant" or m.unit == msgs[p - 1].unit:
            continue
        if p > first_unknown:
            continue
        if conv.dialect == "anthropic" and latest_user < p:
            continue  # the note must go into a user turn before the tail; never after the latest one
        old = msgs[:p]
        if not any(x.role == "assistant" for x in old) and sum(1 for x in old if x.role == "user") < 2:
            return None  # nothing to compact
        return Split(boundary=p, k=k, every=E, target=plan.target_tokens,
                     latest_user_in_old=0 <= latest_user < p)
    return None


# ------------------------------------------------------------------ key

def _canonical(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def split_key(body: dict, dialect: str, plan: RewritePlan, split: Split) -> str:
    h = hashlib.sha256()
    h.update(_canonical([VERSION, dialect, split.every, split.target, plan.pruning_distance, plan.encoding,
                         split.latest_user_in_old, split.boundary]).encode("utf-8", "surrogatepass"))
    for m in body["messages"][:split.boundary]:
        h.update(b"\n")
        h.update(_canonical(m).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# ------------------------------------------------------------------ compaction

def _cut(line: str, n: int) -> str:
    line = line.strip()
    return line if len(line) <= n else line[: n - 1] + "\u2026"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _args_summary(args) -> str:
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except ValueError:
            return _one_line(args)
    else:
        value = args
    if isinstance(value, dict):
        if len(value) == 1:
            v = next(iter(value.values()))
            return _one_line(v if isinstance(v, str) else _canonical(v))
        return " ".join(f"{k}={_one_line(v) if isinstance(v, str) else _canonical(v)}" for k, v in value.items())
    return _one_line(_canonical(value))


def _calls_of(m: Message) -> list:
    """Summaries of the tool calls / commands an assistant message makes."""
    out = []
    w = m.wire
    if not isinstance(w, dict):
        return out
    calls = w.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict):
                out.append(f"{fn.get('name', '')}: {_args_summary(fn.get('arguments', ''))}")
    fc = w.get("function_call")
    if isinstance(fc, dict):
        out.append(f"{fc.get('name', '')}: {_args_summary(fc.get('arguments', ''))}")
    content = w.get("content")
    if isinstance(content, list):
        for b in content:
            if isinstance(b, dict) and b.get("type") == "tool_use":
                out.append(f"{b.get('name', '')}: {_args_summary(b.get('input'))}")
    return out


def _text_segments(m: Message) -> list:
    return [t for _, t in m.segments]


def _assistant_summary(m: Message) -> list:
    """Commands (tool calls, fenced code) and otherwise the first line of an assistant message."""
    parts = _calls_of(m)
    text = "\n".join(_text_segments(m))
    if text.strip():
        fenced = [_one_line(x) for x in _FENCE_RE.findall(text) if x.strip()]
        if fenced:
            parts.extend(fenced)
        elif not parts:
            first = next((x for x in text.split("\n") if x.strip()), "")
            parts.append(first)
    return [_cut(p, CALL_CHARS) for p in parts if p.strip()]


@lru_cache(maxsize=4096)
def _result_lines(text: str) -> tuple:
    """(non-empty lines, the last line that reports an error or None) of a result text."""
    lines = tuple(x for x in text.split("\n") if x.strip())
    pos = _last_error_pos(text)
    error_line = None
    if pos >= 0:
        end = text.find("\n", pos)
        error_line = text[text.rfind("\n", 0, pos) + 1: end if end >= 0 else len(text)]
    return lines, error_line


def _clean(line: str) -> str:
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    if "\r" in line:
        line = line.rsplit("\r", 1)[-1] or line.replace("\r", "")
    return _cut(" ".join(line.split()), LINE_CHARS)


def _line_weight(line: str, weights: dict) -> float:
    if not weights:
        return 0.0
    return sum(weights.get(t, 0.0) for t in _fact_terms(line))


@dataclass
class _Entry:
    priority: tuple
    unit: int
    order: int
    text: str
    tokens: int


def _focus_weights(unit_terms: dict, focus_units) -> dict:
    """idf-weighted terms of the focus units (the old part's end and the task)."""
    n = len(unit_terms)
    df: dict[str, int] = {}
    for terms in unit_terms.values():
        for t in terms:
            df[t] = df.get(t, 0) + 1
    weights = {}
    for u in focus_units:
        for t in unit_terms.get(u, ()):
            w = math.log((1 + n) / (1 + df.get(t, 1)))
            if w > 0.05:
                weights[t] = w
    return weights


def _pinned_positions(old, dialect: str, latest_user_in_old: bool) -> list:
    first_user = next((i for i, m in enumerate(old) if m.role == "user"), -1)
    if dialect == "anthropic":
        return [0] if first_user == 0 else []
    pinned = {i for i, m in enumerate(old) if m.is_system}
    if first_user >= 0:
        pinned.add(first_user)
    if latest_user_in_old:
        lu = max(i for i, m in enumerate(old) if m.role == "user")
        pinned.add(lu)
    return sorted(pinned)


def build_note(old, pinned: list, budget_tokens: int, plan: RewritePlan) -> str:
    """The ctxwarden note that stands in for the non-pinned old messages."""
    enc = plan.encoding
    pinned_set = set(pinned)
    removed = [m for i, m in enumerate(old) if i not in pinned_set]
    removed_tokens = sum(m.tokens for m in removed)
    header = (f"{MARKER_PREFIX} checkpoint] {len(removed)} earlier messages ({removed_tokens} tokens) "
              f"are compacted into this note: the steps taken (call -> result lines) and the names and "
              f"figures they used.")
    units = sorted({m.unit for m in old})
    last_unit = units[-1]
    task_unit = old[pinned[0]].unit if pinned and not old[pinned[0]].is_system else units[0]
    focus = (task_unit, last_unit)
    mterms = [_fact_terms(m.text) for m in old]
    unit_terms: dict[int, dict] = {}
    for m, terms in zip(old, mterms):
        bucket = unit_terms.setdefault(m.unit, {})
        for t in terms:
            bucket[t] = None
    graph_terms = {u: tuple(t for t in d if not t[0].isdigit() or len(t) >= 3) for u, d in unit_terms.items()}
    dist = hop_distances(old, focus, terms=graph_terms)
    weights = _focus_weights(unit_terms, focus)
    near = plan.pruning_distance

    # ---- step log entries
    entries: list[_Entry] = []
    by_unit: dict[int, list] = {}
    for m in removed:
        by_unit.setdefault(m.unit, []).append(m)
    order = 0
    for u in sorted(by_unit):
        hops = dist.get(u, 10**6)
        recency = last_unit - u
        members = by_unit[u]
        calls: list = []
        result_texts: list = []
        for m in members:
            if m.role == "assistant":
                calls.extend(_assistant_summary(m))
            else:
                result_texts.extend(_text_segments(m))
                if m.opaque:
                    result_texts.append("[image or document]")
        call_text = "; ".join(calls) if calls else "(no call)"
        lines: list = []
        error_line = None
        for t in result_texts:
            ls, err = _result_lines(t)
            lines.extend(ls)
            if err is not None:
                error_line = err
        if not lines and not calls:
            continue
        picked = []
        if lines:
            picked.append(lines[0])
            if error_line is not None:
                picked.append(error_line)
            picked.append(lines[-1])
        picked = list(dict.fromkeys(_clean(x) for x in picked))
        res = " | ".join(picked)
        size = f" ({len(lines)} lines)" if len(lines) > len(picked) else ""
        base_text = f"- {call_text} -> {res}{size}" if lines else f"- {call_text}"
        near_flag = 0 if hops <= near else 1
        entries.append(_Entry((0, near_flag, recency, hops), u, order, base_text, count_text(base_text, enc) + 1))
        order += 1
        if hops <= near and len(lines) > len(picked) and recency <= NEAR_RECENT_UNITS:
            scored = sorted((-_line_weight(lines[i], weights), i) for i in range(min(len(lines), MAX_SCORED_LINES)))
            shown = set(picked)
            rank = 0
            for sc, i in scored:
                if sc >= 0 or rank >= NEAR_EXTRA_LINES:
                    break
                line = _clean(lines[i])
                if line in shown:
                    continue
                shown.add(line)
                t = "    " + line
                entries.append(_Entry((1, rank, recency, hops), u, order, t, count_text(t, enc) + 1))
                order += 1
                rank += 1

    step_budget = int(budget_tokens * STEP_SHARE)
    used = count_text(header, enc) + 8
    chosen = []
    for e in sorted(entries, key=lambda e: e.priority + (e.order,)):
        if used + e.tokens <= step_budget:
            chosen.append(e)
            used += e.tokens
    chosen.sort(key=lambda e: e.order)
    shown_units = {e.unit for e in chosen}
    not_shown = len(set(by_unit) - shown_units)
    step_lines = [e.text for e in chosen]
    if not_shown:
        step_lines.insert(0, f"({not_shown} older steps not listed)")
        used += 8

    # ---- identifier digest: salient names and figures of the removed messages not already shown
    shown_text = "\n".join(step_lines) + "\n" + "\n".join("\n".join(_text_segments(old[i])) for i in pinned)
    shown_terms = set(_FACT_TERM_RE.findall(shown_text))
    stats: dict[str, list] = {}
    for i, m in enumerate(old):
        if i in pinned_set:
            continue
        is_asst = m.role == "assistant"
        for t in mterms[i]:
            s = stats.get(t)
            if s is None:
                stats[t] = [0, 0, m.unit, 0]
                s = stats[t]
            if s[3] != m.unit + 1:
                s[0] += 1         # units mentioning it
                s[3] = m.unit + 1
            if is_asst:
                s[1] = 1          # the agent itself used it
            s[2] = m.unit         # last unit seen
    # names the assistant itself used first, then names seen in more than one step, then the most recent
    def keyf(t):
        n_units, by_assistant, last_seen, _ = stats[t]
        return (-by_assistant, -min(n_units, 2), -last_seen, t)
    ranked = sorted((t for t in stats if t not in shown_terms), key=keyf)
    budget_left = budget_tokens - used - 16
    words: list = []
    figures: list = []
    for t in ranked:
        c = count_text(" " + t, enc)
        if c > budget_left:
            if budget_left < 4:
                break
            continue
        (figures if t[0].isdigit() else words).append(t)
        budget_left -= c
    figure_text = _figure_runs(figures)
    # runs of consecutive integers collapse into ranges: spend what that saved on more names
    budget_left += sum(count_text(" " + t, enc) for t in figures) - count_text(" " + figure_text, enc)
    chosen_words = set(words)
    for t in ranked:
        if budget_left < 4:
            break
        if t[0].isdigit() or t in chosen_words:
            continue
        c = count_text(" " + t, enc)
        if c <= budget_left:
            words.append(t)
            budget_left -= c
    parts = [header]
    if step_lines:
        parts.append("Steps (oldest first):")
        parts.extend(step_lines)
    if words:
        parts.append("Names used earlier: " + " ".join(words))
    if figure_text:
        parts.append("Figures used earlier: " + figure_text)
    return "\n".join(parts)


def _figure_runs(figures: list) -> str:
    """Figures in ascending order; runs of 3+ consecutive integers as ``a-b``."""
    ints = sorted({int(t) for t in figures if t.isdigit() and len(t) < 10})
    others = sorted((t for t in figures if not (t.isdigit() and len(t) < 10)), key=lambda t: (len(t), t))
    out = []
    i = 0
    while i < len(ints):
        j = i
        while j + 1 < len(ints) and ints[j + 1] == ints[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{ints[i]}-{ints[j]}")
        else:
            out.extend(str(x) for x in ints[i:j + 1])
        i = j + 1
    return " ".join(out + others)


@lru_cache(maxsize=8192)
def _fact_terms(text: str) -> tuple:
    """Distinct salient identifiers and figures (2+ digits) of a text, in first-seen order."""
    out = {}
    for t in dict.fromkeys(_FACT_TERM_RE.findall(text)):
        if t[0].isdigit():
            if len(t) >= 2:
                out[t] = None
        elif len(t) >= 3 and is_salient(t):
            out[t] = None
    return tuple(out)


def compact(old, dialect: str, plan: RewritePlan, latest_user_in_old: bool) -> tuple:
    """The compacted old part as wire messages: a pure function of ``old`` (the parsed
    original messages before the boundary), ``dialect``, the plan's checkpoint target,
    pruning distance and encoding, and ``latest_user_in_old``."""
    C = plan.target_tokens
    total_old = sum(m.tokens for m in old)
    if total_old <= C:
        return tuple(m.wire for m in old)
    pinned = _pinned_positions(old, dialect, latest_user_in_old)
    # the system prompt is not part of the old part's target; the pinned task statement is
    pinned_tokens = sum(old[i].tokens for i in pinned if not old[i].is_system)
    note_budget = max(C - pinned_tokens - 8, int(C * NOTE_FLOOR))
    note = build_note(old, pinned, note_budget, plan)
    if dialect == "anthropic":
        if pinned:
            first = old[0].wire
            content = first.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            blocks.append({"type": "text", "text": note})
            new_first = {k: (blocks if k == "content" else v) for k, v in first.items()}
            return (new_first,)
        return ({"role": "user", "content": note},)
    out = [old[i].wire for i in pinned]
    out.append({"role": "assistant" if latest_user_in_old else "user", "content": note})
    return tuple(out)


# ------------------------------------------------------------------ tail

def _truncate(text: str, max_tokens: int, encoding: str) -> str:
    """Head and tail lines of a long text within about ``max_tokens``, with an omission marker."""
    lines = text.split("\n")
    if len(lines) < 6:
        # one huge line: cut by characters
        keep = max(200, max_tokens * 2)
        if len(text) <= 2 * keep:
            return text
        return f"{text[:keep]}\n{MARKER_PREFIX} {len(text) - 2 * keep} characters omitted]\n{text[-keep:]}"
    per_side = max_tokens // 2
    head: list = []
    used = 0
    for x in lines:
        c = count_text(x, encoding) + 1
        if used + c > per_side and head:
            break
        head.append(x)
        used += c
    tail: list = []
    used = 0
    for x in reversed(lines[len(head):]):
        c = count_text(x, encoding) + 1
        if used + c > per_side and tail:
            break
        tail.append(x)
        used += c
    tail.reverse()
    omitted = len(lines) - len(head) - len(tail)
    if omitted <= 0:
        return text
    return "\n".join(head + [f"{MARKER_PREFIX} {omitted} lines omitted]"] + tail)


def compress_tail(tail, critical_units: set, plan: RewritePlan) -> tuple:
    """Focus-independent per-message compression of the tail (see the module docstring).

    A tail message is rewritten only when it is an exact duplicate of earlier tail text or
    longer than ``budget / TAIL_MAX_DIVISOR`` tokens, and never while it is critical (the
    pending unit, the latest user message).  So the rewrite of turn n is a byte-identical
    prefix of turn n+1's, except for such a very long or duplicate text that was still
    pending in turn n: it is cut once, when it stops being pending."""
    enc = plan.encoding
    max_tokens = max(256, plan.budget // TAIL_MAX_DIVISOR)
    seen: set = set()
    out = []
    from .model import with_segments
    for m in tail:
        editable = (m.unit not in critical_units and not m.unknown and not m.is_system and m.segments)
        texts = []
        changed = False
        for _, text in m.segments:
            key = None
            if len(text) >= DEDUP_MIN_CHARS:
                key = fold_text(text).strip()
            if editable and key is not None and key in seen:
                texts.append(f"{MARKER_PREFIX} same content as an earlier message; omitted]")
                changed = True
                continue
            if key is not None:
                seen.add(key)
            if editable and len(text) > max_tokens and count_text(text, enc) > max_tokens:
                # only very long texts are rewritten (folded, minified, then cut to head + tail):
                # a text below the limit keeps its bytes in every later turn
                new = minify_json(fold_text(text))
                if count_text(new, enc) > max_tokens:
                    new = _truncate(new, max_tokens, enc)
                if new != text:
                    texts.append(new)
                    changed = True
                    continue
            texts.append(text)
        if changed:
            new_m = with_segments(m, tuple(texts), enc, "compressed")
            if m.tokens - new_m.tokens >= TAIL_MIN_SAVING:
                truncated = any(MARKER_PREFIX in t and MARKER_PREFIX not in o for t, (_, o) in zip(texts, m.segments))
                out.append(dataclasses.replace(new_m, action="truncated" if truncated else "compressed"))
                continue
        out.append(m)
    return tuple(out)


def count_wire(messages, dialect: str, encoding: str) -> int:
    return sum(count_message_tokens(w, dialect, encoding) for w in messages)
