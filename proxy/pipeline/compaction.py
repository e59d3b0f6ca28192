"""Compaction: the old middle of a conversation becomes one note of steps.

Each compacted step (an assistant message and the results or user messages
that answer it) becomes a stub: what the assistant set out to do (its first
line of prose, short), the call or command it made (verbatim when it is one
short line) and what that showed (how many lines, the first, the last error
and the last line, verbatim).  Then the lines of the compacted results that
the focus needs (they name identifiers of the kept recent turns, the task or
the latest turn, weighted by how rare those identifiers are) are kept
verbatim under their step.  Observation masking of this kind keeps an agent
as able as a summary by a model does, at no model call.

The note is a pure function of the messages it covers and the focus, so the
same conversation always compacts to the same bytes.  Entries of an earlier
note are carried over as they are; the oldest are dropped first when the
note's share of the budget is full.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..tokens import count_text
from ..dialects.base import Message
from .text import MARKER_PREFIX, identifiers, terms_of

THOUGHT_CHARS = 300     # the assistant's own reasoning: its first line, cut to this many characters
LINE_CHARS = 300        # output lines longer than this are cut (and then no longer verbatim)
CALL_CHARS = 1000       # a call line longer than this is cut
REASONING_LINES = 8     # lines of the assistant's prose kept per step, those naming most
CALL_LINES = 40         # a call's lines shown verbatim (a long script: the first ones; the agent reuses them)
SHORT_USER_LINES = 6    # a user message of at most this many lines is kept whole (an instruction, not an output)
MAX_FOCUS_LINES = 6     # per step
MAX_SCORED_LINES = 2000  # lines of one result scored for the focus

_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)
ERROR_WORDS = ("error", "exception", "traceback", "failed", "failure", "fatal", "denied", "not found",
               "no such", "cannot", "unable", "invalid", "assert")


def _cut(line: str, n: int) -> str:
    line = line.strip()
    return line if len(line) <= n else line[: n - 1] + "\u2026"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _args_summary(args: object) -> str:
    value = args
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except ValueError:
            return _one_line(args)
    if isinstance(value, dict) and len(value) == 1:
        only = next(iter(value.values()))
        return only if isinstance(only, str) else json.dumps(only, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def calls_of(message: Message) -> list[str]:
    """The calls an assistant message makes, as their argument text: tool
    calls (as its dialect parsed them) and fenced commands in its text
    (agents that speak plain text)."""
    calls = [_args_summary(arguments) for arguments in message.calls]
    for _, text in message.segments:
        calls.extend(code.strip() for code in _FENCE_RE.findall(text) if code.strip())
    return calls


def _reasoning(message: Message, first: str) -> list[str]:
    """Lines of the assistant's prose that name something (an identifier),
    most names first: what it concluded about the code it read."""
    ranked = []
    for _, text in message.segments:
        for line in _FENCE_RE.sub("\n", text).split("\n"):
            names = identifiers(line)
            stripped = line.strip()
            if names and stripped and stripped not in first and len(stripped) <= LINE_CHARS:
                ranked.append((-len(names), len(ranked), stripped))
    return [line for _, _, line in sorted(ranked)[:REASONING_LINES]]


def _thought(message: Message) -> str:
    """The first line of the assistant's prose (outside code fences)."""
    for _, text in message.segments:
        prose = _FENCE_RE.sub("\n", text)
        for line in prose.split("\n"):
            if line.strip() and not line.strip().startswith("```"):
                return _cut(line, THOUGHT_CHARS)
    return ""


def error_line(lines: Sequence[str]) -> str | None:
    """The last line that reports a problem (a plain substring scan: linear)."""
    for line in reversed(lines):
        low = line.lower()
        if any(word in low for word in ERROR_WORDS):
            return line
    return None


_TAG_RE = re.compile(r"</?[A-Za-z_][\w-]*>")
# three characters for which str.isalnum() is true (\w is exactly those and "_"),
# found without a Python step per character: every line of every output is asked
_THREE_ALNUM = re.compile(r"[^\W_](?:.*?[^\W_]){2}", re.S)


def _says_something(line: str) -> bool:
    """Not blank and not just markup (an output wrapped in <output> tags):
    three letters or digits outside tags."""
    return _THREE_ALNUM.search(_TAG_RE.sub("", line) if "<" in line else line) is not None


def _result_lines(message: Message) -> list[str]:
    return [line.rstrip() for _, text in message.segments for line in text.split("\n") if _says_something(line)]


# The note's room goes to whole steps, newest first: the head line and the
# calls (CORE); then, among the steps kept, to each further kind of line in
# turn, newest step first: the reasoning lines that name something, what the
# calls showed, the output lines the focus needs.
CORE = ("call", "call+")
PASSES = ("reason", "result", "focus")


@dataclass(frozen=True)
class NoteEntry:
    """One compacted step: a head line, then (kind, text) lines in display order."""

    head: str
    lines: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        return "\n".join((self.head,) + tuple(text for _, text in self.lines))

    def to_json(self) -> list:
        return [self.head, [list(line) for line in self.lines]]

    @classmethod
    def from_json(cls, data: list) -> NoteEntry:
        return cls(data[0], tuple((kind, text) for kind, text in data[1]))


def _stub(unit: Sequence[Message], weights: dict[str, float]) -> NoteEntry | None:
    """A step's stub: the assistant's first line, its reasoning lines that name
    something, its calls' lines, what they showed, each an original line (so
    names keep their context), and the output lines the focus needs."""
    head = ""
    lines: list[tuple[str, str]] = []
    scored: list[tuple[float, int, str]] = []
    for message in unit:
        if message.role == "assistant":
            thought = _thought(message)
            head = head or (f"- {thought}" if thought else "- (a call)")
            lines.extend(("reason", "  " + line) for line in _reasoning(message, thought))
            for call in calls_of(message):
                call_lines = [line for line in call.split("\n") if _says_something(line)]
                lines.extend(("call" if k == 0 else "call+", "    " + _cut(line, CALL_CHARS))
                             for k, line in enumerate(call_lines[:CALL_LINES]))
                if len(call_lines) > CALL_LINES:
                    lines.append(("call+", f"    ({len(call_lines) - CALL_LINES} more lines)"))
            continue
        output = _result_lines(message)
        if message.opaque:
            lines.append(("result", "  (an image or document)"))
        if not output:
            continue
        wrote = message.role == "user" and not message.result_ids and not head
        if wrote and len(output) <= SHORT_USER_LINES:
            head = "- the user wrote:"
            lines.extend(("call", "    " + _cut(line, LINE_CHARS)) for line in output)
            continue
        shown = [output[0]]
        problem = error_line(output)
        if problem is not None:
            shown.append(problem)
        shown.append(output[-1])
        shown = list(dict.fromkeys(_cut(line, LINE_CHARS) for line in shown))
        verb = "the user wrote" if wrote else "it showed"
        lines.append(("result", f"  {verb} {len(output)} line{'s' if len(output) != 1 else ''}, among them:"))
        lines.extend(("result", "    " + line) for line in shown)
        for line in output[:MAX_SCORED_LINES]:
            # the weights' terms are identifiers: the line's other terms weigh nothing
            # whether salient or not, so they need not be asked (the same sum)
            score = sum(weights.get(term, 0.0) for term in terms_of(line))
            if score > 0 and _cut(line, LINE_CHARS) not in shown:
                scored.append((-score, len(scored), line.strip()))
    if not head and not lines:
        return None
    focus = dict.fromkeys(_cut(line, LINE_CHARS) for _, _, line in sorted(scored)[:MAX_FOCUS_LINES])
    lines.extend(("focus", "    " + line) for line in focus)
    return NoteEntry(head or "- (earlier output)", tuple(lines))


def focus_weights(focus_texts: Iterable[str], unit_texts: Sequence[str]) -> dict[str, float]:
    """Identifiers of the focus, weighted by how rare they are among the compacted units."""
    df: dict[str, int] = {}
    for text in unit_texts:
        # every term counted: only the focus's identifiers are looked up
        for term in terms_of(text):
            df[term] = df.get(term, 0) + 1
    n = len(unit_texts)
    weights = {}
    for text in focus_texts:
        for term in identifiers(text):
            if term in df:
                weights[term] = math.log((1 + n) / df[term])
    return {t: w for t, w in weights.items() if w > 0.05}


def compact_units(units: Sequence[Sequence[Message]], focus_texts: Iterable[str]) -> list[NoteEntry]:
    """Note entries for compacted units, oldest first."""
    unit_texts = ["\n".join(m.text for m in unit) for unit in units]
    weights = focus_weights(focus_texts, unit_texts)
    return [entry for unit in units if (entry := _stub(unit, weights)) is not None]


def render_note(entries: Sequence[NoteEntry], budget_tokens: int, compacted_messages: int,
                encoding: str) -> tuple[str, tuple[NoteEntry, ...]]:
    """The note text within ``budget_tokens`` and the entries it shows.

    Whole steps (head and calls) newest first while they fit (older steps
    are dropped, and counted: what happened last matters most), then the
    other kinds of line in the order of PASSES; a line already shown is not
    repeated."""
    header = (f"{MARKER_PREFIX} compacted] {compacted_messages} earlier messages of this conversation "
              f"are summarised below, oldest first: what each step set out to do, its calls, what they "
              f"showed and the lines that matter now, verbatim. Ask again for anything you need in full.")
    left = budget_tokens - count_text(header, encoding) - 16
    kept: list[int] = []
    shown: set[str] = set()
    picked: dict[int, set[int]] = {}
    for i in range(len(entries) - 1, -1, -1):
        # a call already shown (the same command run again) is not repeated
        core = [k for k, (kind, text) in enumerate(entries[i].lines)
                if kind in CORE and text.strip() not in shown]
        cost = sum(count_text(entries[i].lines[k][1], encoding) + 1 for k in core) + count_text(entries[i].head,
                                                                                                encoding) + 1
        if cost > left:
            break
        kept.append(i)
        picked[i] = set(core)
        shown.update(entries[i].lines[k][1].strip() for k in core)
        left -= cost
    for kind in PASSES:
        for i in kept:
            for k, (line_kind, text) in enumerate(entries[i].lines):
                if line_kind != kind or (text.startswith("    ") and text.strip() in shown):
                    continue
                cost = count_text(text, encoding) + 1
                if cost > left:
                    break
                picked[i].add(k)
                shown.add(text.strip())
                left -= cost
    kept_entries = tuple(NoteEntry(entries[i].head, tuple(line for k, line in enumerate(entries[i].lines)
                                                          if k in picked[i]))
                         for i in sorted(kept))
    dropped = len(entries) - len(kept)
    parts = [header]
    if dropped:
        parts.append(f"({dropped} older steps are not listed)")
    parts.extend(entry.text() for entry in kept_entries)
    return "\n".join(parts), kept_entries
