"""Parallel execution: task graphs of chat calls, run as their dependencies finish.

A parallel run is a JSON body

    {"tasks": [
        {"id": "facts",   "request": {<chat request>}},
        {"id": "summary", "request": {<chat request using {{facts}}>},
         "depends_on": ["facts"], "upstream_path": "/v1/chat/completions"}
    ]}

:func:`parse_task_graph` checks it completely before anything is sent and
raises :class:`TaskGraphError` naming the problem; :func:`run_task_graph` runs
it with a caller-supplied ``run_one`` coroutine (the proxy's rewrite, cache and
upstream path, inside ``gate.fanout()``), at most ``max_workers`` tasks at once,
each under ``task_timeout`` seconds, and returns one :class:`TaskResult` per
task in input order.

Tasks
-----
``id``            required; a non-empty string of at most 128 characters with no
                  whitespace and no ``{`` or ``}``; unique within the run.
``request``       required; the chat request body, an object with a ``messages``
                  list. ``"stream": true`` is refused: a task's answer is needed
                  whole. Every other field is passed through untouched.
``depends_on``    optional list of task ids (default ``[]``); the task starts only
                  after all of them finished with status ``ok``. Repeats are
                  ignored; order does not matter.
``upstream_path`` optional, ``"/v1/chat/completions"`` (default, OpenAI dialect)
                  or ``"/v1/messages"`` (Anthropic dialect).

Placeholders
------------
``{{ID}}`` in a task's messages is replaced by the answer text of task ``ID``
when the task starts. ``ID`` must be one of the task's dependencies, direct or
transitive (a dependency of a dependency also finished before the task starts).
Substitution happens in ``request["messages"]`` only:

* a message's ``content`` when it is a string;
* the ``text`` of every ``{"type": "text"}`` block in a ``content`` list,
  including the blocks (or string ``content``) of Anthropic ``tool_result``
  blocks.

Nothing else is touched: not roles, names, tool calls, image blocks, the
Anthropic top-level ``system`` field nor any other request field.

Size: a task's request with its placeholders filled must be at most the
server's ``max_body_bytes`` once serialized, as a request sent to the proxy
directly must. The size is computed from the template and the answers' sizes
before anything is built (:func:`filled_size`); a task over the limit is not
sent, ends ``error`` with ``http_status`` 413, and its dependants are skipped.

Syntax, scanned left to right in one pass (inserted answers are never
re-scanned):

* ``{{ID}}`` with ``ID`` one or more characters that are not whitespace, ``{``
  or ``}`` is a placeholder. It must name a dependency, otherwise the whole run
  is refused (400).
* ``{{{{`` is a literal ``{{``. So ``{{{{name}}`` yields the text ``{{name}}``.
* Anything else stays as written, in particular ``{{ name }}`` (spaces inside)
  and a lone ``{{`` or ``}}``, so most template snippets (Jinja, Handlebars)
  need no escaping.

The answer text of a task is, for an OpenAI answer, ``choices[0].message.content``
(a string, or the concatenated ``text`` of its parts; ``null`` gives ``""``) and,
for an Anthropic answer, the ``text`` blocks of ``content`` concatenated with no
separator. An answer with no text (only tool calls, say) substitutes ``""``.

Statuses
--------
``ok``       run_one answered with a 2xx status and a readable JSON body.
``error``    run_one raised, or answered with a non-2xx status (``http_status``
             and ``answer`` then hold the upstream's status and error body), or
             with a 2xx body that could not be read (see ``TaskAnswer.from_http``);
             or the task's request, placeholders filled, would have been larger
             than ``max_body_bytes`` (``http_status`` 413, nothing was sent).
``timeout``  the task took longer than ``task_timeout``; its call was cancelled.
``skipped``  not run because a dependency (direct or transitive) did not end
             ``ok``; ``blocked_by`` names the task that failed and ``error`` says so.

Timing
------
``started`` / ``finished`` are seconds since the run started, from the monotonic
clock (``None`` for a skipped task); ``duration_ms`` is their difference in
milliseconds. ``to_dict()`` also gives ``started_at`` / ``finished_at``, wall-clock
ISO 8601 UTC times (the run's ``time.time()`` start plus those offsets). A task's
time, and its ``task_timeout``, include any wait for an upstream slot inside
``run_one``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("ctxwarden.parallel")

try:  # optional decoders, used when installed (as httpx does)
    import brotli as _brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None
try:
    import zstandard as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _zstd = None

__all__ = [
    "CHAT_PATHS",
    "DEFAULT_UPSTREAM_PATH",
    "Task",
    "TaskAnswer",
    "TaskGraph",
    "TaskGraphError",
    "TaskResult",
    "AnswerUnreadable",
    "MAX_ANSWER_BYTES",
    "answer_text",
    "decode_content",
    "fill_placeholders",
    "filled_size",
    "json_string_size",
    "request_size",
    "parse_task_graph",
    "run_task_graph",
    "summarize",
]

DEFAULT_UPSTREAM_PATH = "/v1/chat/completions"
CHAT_PATHS = ("/v1/chat/completions", "/v1/messages")
TASK_FIELDS = ("id", "request", "depends_on", "upstream_path")
MAX_ID_LENGTH = 128

#: the most bytes a task's answer may take once decoded (gzip etc.); a larger
#: answer makes the task fail instead of being inflated without bound
MAX_ANSWER_BYTES = 64 * 1024 * 1024

OK, ERROR, TIMEOUT, SKIPPED = "ok", "error", "timeout", "skipped"
STATUSES = (OK, ERROR, TIMEOUT, SKIPPED)

_ID_RE = re.compile(r"[^\s{}]+")
# one pass: an escaped '{{' or a placeholder; anything else is literal
_TOKEN_RE = re.compile(r"\{\{\{\{|\{\{([^\s{}]+)\}\}")


# --------------------------------------------------------------------------- model


class TaskGraphError(ValueError):
    """The run's body is unacceptable; ``str(err)`` names the problem (-> 400).

    ``task_id`` / ``index`` say which task, when the problem is one task's.
    """

    def __init__(self, message: str, *, task_id: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.index = index


@dataclass(frozen=True, eq=False)
class Task:
    id: str
    request: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    upstream_path: str = DEFAULT_UPSTREAM_PATH
    index: int = 0
    #: ids named by placeholders in the messages
    placeholders: frozenset[str] = frozenset()
    #: whether the messages hold any '{{' that filling must process
    templated: bool = False
    #: fields allowed by parse_task_graph(extra_fields=...), as given
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: (id, occurrences) of every placeholder in the messages, for the size check
    placeholder_counts: tuple[tuple[str, int], ...] = ()
    #: how many '{{{{' escapes the messages hold (each becomes '{{')
    escapes: int = 0

    @property
    def dialect(self) -> str:
        return "anthropic" if self.upstream_path == "/v1/messages" else "openai"


@dataclass(frozen=True, eq=False)
class TaskGraph:
    """Validated tasks in input order, plus the edges the executor needs."""

    tasks: tuple[Task, ...]
    by_id: Mapping[str, Task]
    #: id -> ids of the tasks that depend on it directly, in input order
    dependants: Mapping[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tasks]


@dataclass
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

    @classmethod
    def from_http(cls, status: int, content: bytes | str | None,
                  headers: Mapping[str, str] | None = None, *,
                  max_bytes: int = MAX_ANSWER_BYTES) -> "TaskAnswer":
        """From a raw HTTP answer, as it came on the wire: decodes the body by
        its ``Content-Encoding`` (gzip, deflate, identity; br and zstd when
        their module is installed), at most ``max_bytes`` decoded, parses it as
        JSON and reads the ``x-ctxwarden-tokens-before/-after`` and
        ``x-ctxwarden-cache`` headers.

        A 2xx answer whose body cannot be decoded or is not JSON gets ``error``
        set (the task then fails rather than report ``ok`` with no answer)."""
        h = _lower_keys(headers)
        body: Any = None
        error: str | None = None
        if content:
            try:
                if isinstance(content, str):
                    content = content.encode("utf-8", "surrogatepass")
                content = decode_content(content, h.get("content-encoding"), max_bytes)
                body = json.loads(content)
            except AnswerUnreadable as exc:
                error = f"upstream answered {status} with a body that could not be read: {exc}"
            except (ValueError, UnicodeDecodeError):
                if 200 <= status < 300:
                    error = f"upstream answered {status} with a body that is not JSON"
        elif 200 <= status < 300:
            error = f"upstream answered {status} with an empty body"
        return cls(
            status=status,
            body=body,
            tokens_before=_int_or_none(h.get("x-ctxwarden-tokens-before")),
            tokens_after=_int_or_none(h.get("x-ctxwarden-tokens-after")),
            cache=h.get("x-ctxwarden-cache"),
            error=error,
        )


class AnswerUnreadable(ValueError):
    """A task's answer body could not be decoded (unknown or broken
    Content-Encoding, or larger than the limit once decoded)."""


def _lower_keys(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {str(k).lower(): v for k, v in headers.items()}


def decode_content(content: bytes, encoding: str | None, max_bytes: int = MAX_ANSWER_BYTES) -> bytes:
    """``content`` with its ``Content-Encoding`` undone (the codings listed are
    undone last first); raise :class:`AnswerUnreadable` for an unknown or broken
    coding, or when the decoded body would exceed ``max_bytes`` (decoding stops
    there: a small compressed answer cannot expand without bound)."""
    codings = [c.strip().lower() for c in (encoding or "").split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        try:
            if coding in ("gzip", "x-gzip"):
                content = _inflate(content, 16 + zlib.MAX_WBITS, max_bytes, members=True)
            elif coding == "deflate":  # zlib-wrapped per the RFC; some servers send it raw
                try:
                    content = _inflate(content, zlib.MAX_WBITS, max_bytes)
                except zlib.error:
                    content = _inflate(content, -zlib.MAX_WBITS, max_bytes)
            elif coding == "br" and _brotli is not None:
                content = _bounded(_brotli.decompress(content), max_bytes)
            elif coding == "zstd" and _zstd is not None:
                content = _bounded(_zstd.ZstdDecompressor().decompress(content, max_output_size=max_bytes + 1),
                                   max_bytes)
            else:
                raise AnswerUnreadable(f"unsupported Content-Encoding {coding!r}")
        except AnswerUnreadable:
            raise
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError
            raise AnswerUnreadable(f"broken {coding} body ({exc})") from exc
    if len(content) > max_bytes:
        raise AnswerUnreadable(f"the answer is larger than {max_bytes} bytes")
    return content


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
            if len(out) > max_bytes:
                raise AnswerUnreadable(f"the answer is larger than {max_bytes} bytes once decoded")
            buf = d.unconsumed_tail
            if not chunk and not buf:
                raise zlib.error("the compressed body ends early")
        data = d.unused_data
        if not members or not data.strip(b"\0"):  # trailing NULs after gzip members are padding
            return bytes(out)


@dataclass
class TaskResult:
    id: str
    status: str
    http_status: int | None = None
    #: the upstream's parsed JSON answer (an error body for a non-2xx status)
    answer: Any = None
    error: str | None = None
    #: for 'skipped': the task whose failure stopped this one
    blocked_by: str | None = None
    #: seconds since the run started (monotonic clock); None if never started
    started: float | None = None
    finished: float | None = None
    duration_ms: float | None = None
    tokens_before: int | None = None
    tokens_after: int | None = None
    cache: str | None = None
    #: time.time() when the run started (anchor for the wall-clock fields)
    run_started_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the shape of one entry of the endpoint's response and
        of one line of ``run-parallel``'s JSONL."""
        return {
            "id": self.id,
            "status": self.status,
            "http_status": self.http_status,
            "answer": self.answer,
            "error": self.error,
            "blocked_by": self.blocked_by,
            "started": _round(self.started),
            "finished": _round(self.finished),
            "started_at": _iso(self.run_started_at, self.started),
            "finished_at": _iso(self.run_started_at, self.finished),
            "duration_ms": self.duration_ms,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "cache": self.cache,
        }


def summarize(results: Sequence[TaskResult]) -> dict[str, Any]:
    """Counts by status and the run's span: {"total", "ok", "error", "timeout",
    "skipped", "wall_ms"} (wall_ms from the first start to the last finish)."""
    out: dict[str, Any] = {"total": len(results)}
    for s in STATUSES:
        out[s] = 0
    for r in results:
        out[r.status] += 1
    starts = [r.started for r in results if r.started is not None]
    ends = [r.finished for r in results if r.finished is not None]
    out["wall_ms"] = round((max(ends) - min(starts)) * 1000, 3) if starts and ends else 0.0
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _iso(anchor: float | None, offset: float | None) -> str | None:
    if anchor is None or offset is None:
        return None
    return datetime.fromtimestamp(anchor + offset, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- parsing


def parse_task_graph(body: Any, max_tasks: int, *, extra_fields: Collection[str] = ()) -> TaskGraph:
    """Validate a run's body and build its graph; raise TaskGraphError naming the
    first problem found. Nothing is sent anywhere.

    ``extra_fields`` lets the caller accept further per-task fields (kept in
    ``Task.extra``); any other unknown field is refused, so a typo such as
    ``dependsOn`` does not silently drop a dependency.
    """
    if not isinstance(body, dict):
        raise TaskGraphError(f"the body must be a JSON object with a 'tasks' list, not {_kind(body)}")
    if "tasks" not in body:
        raise TaskGraphError("the body has no 'tasks' list")
    raw_tasks = body["tasks"]
    if not isinstance(raw_tasks, list):
        raise TaskGraphError(f"'tasks' must be a list, not {_kind(raw_tasks)}")
    if len(raw_tasks) > max_tasks:
        raise TaskGraphError(f"{len(raw_tasks)} tasks is more than the maximum of {max_tasks} per run")

    allowed = set(TASK_FIELDS) | set(extra_fields)
    tasks: list[Task] = []
    by_id: dict[str, Task] = {}
    for index, raw in enumerate(raw_tasks):
        task = _parse_task(raw, index, allowed)
        if task.id in by_id:
            first = by_id[task.id].index
            raise TaskGraphError(
                f"duplicate task id '{task.id}' (tasks[{first}] and tasks[{index}])",
                task_id=task.id, index=index)
        by_id[task.id] = task
        tasks.append(task)

    # unknown dependencies
    for t in tasks:
        for d in t.depends_on:
            if d not in by_id:
                raise TaskGraphError(f"task '{t.id}' depends on unknown task '{d}'", task_id=t.id, index=t.index)

    cycle = _find_cycle(tasks, by_id)
    if cycle:
        path = " -> ".join(f"'{i}'" for i in cycle)
        raise TaskGraphError(f"dependency cycle: {path}", task_id=cycle[0])

    # placeholders must name a (transitive) dependency
    children: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.depends_on:
            children[d].append(t.id)
    downstream: dict[str, set[str]] = {}  # id -> every task that depends on it, transitively
    for t in tasks:
        for name in sorted(t.placeholders):
            if name in t.depends_on:
                continue
            if name in by_id:
                if name not in downstream:
                    downstream[name] = _closure(name, children)
                if t.id in downstream[name]:
                    continue
            if name == t.id:
                why = "names the task itself"
            elif name not in by_id:
                why = "names no task of this run"
            else:
                why = f"names task '{name}', which is not among its dependencies (add it to depends_on)"
            raise TaskGraphError(
                f"task '{t.id}': placeholder {{{{{name}}}}} {why}; write {{{{{{{{{name}}}}} for a literal "
                f"'{{{{{name}}}}}'",
                task_id=t.id, index=t.index)

    return TaskGraph(tuple(tasks), by_id, {k: tuple(v) for k, v in children.items()})


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _parse_task(raw: Any, index: int, allowed: set[str]) -> Task:
    where = f"tasks[{index}]"
    if not isinstance(raw, dict):
        raise TaskGraphError(f"{where} must be an object, not {_kind(raw)}", index=index)
    if "id" not in raw:
        raise TaskGraphError(f"{where} has no 'id'", index=index)
    tid = raw["id"]
    if not isinstance(tid, str) or not tid:
        raise TaskGraphError(f"{where}: 'id' must be a non-empty string, not {_show(tid)}", index=index)
    if len(tid) > MAX_ID_LENGTH or not _ID_RE.fullmatch(tid):
        raise TaskGraphError(
            f"{where}: id {_show(tid)} must be at most {MAX_ID_LENGTH} characters with no whitespace, "
            f"'{{' or '}}'", index=index)
    where = f"task '{tid}'"
    unknown = sorted(k for k in raw if k not in allowed)
    if unknown:
        raise TaskGraphError(
            f"{where}: unknown field {_show(unknown[0])} (a task has {', '.join(sorted(allowed))})",
            task_id=tid, index=index)

    if "request" not in raw:
        raise TaskGraphError(f"{where} has no 'request'", task_id=tid, index=index)
    request = raw["request"]
    if not isinstance(request, dict):
        raise TaskGraphError(f"{where}: 'request' must be an object, not {_kind(request)}", task_id=tid, index=index)
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise TaskGraphError(
            f"{where}: request.messages must be a list, not {_kind(messages)}" if "messages" in request
            else f"{where}: request has no 'messages' list", task_id=tid, index=index)
    if request.get("stream") not in (None, False):
        raise TaskGraphError(f"{where}: request.stream must be false or absent; a task's answer is read whole",
                             task_id=tid, index=index)

    deps_raw = raw.get("depends_on", [])
    if deps_raw is None:
        deps_raw = []
    if not isinstance(deps_raw, list) or not all(isinstance(d, str) for d in deps_raw):
        raise TaskGraphError(f"{where}: 'depends_on' must be a list of task ids (strings), not {_show(deps_raw)}",
                             task_id=tid, index=index)
    deps = tuple(dict.fromkeys(deps_raw))  # drop repeats, keep order

    path = raw.get("upstream_path", DEFAULT_UPSTREAM_PATH)
    if path is None:
        path = DEFAULT_UPSTREAM_PATH
    if path not in CHAT_PATHS:
        raise TaskGraphError(
            f"{where}: upstream_path must be {' or '.join(repr(p) for p in CHAT_PATHS)}, not {_show(path)}",
            task_id=tid, index=index)

    counts: dict[str, int] = {}
    escapes = 0
    templated = False
    for s in _message_strings(messages):
        if "{{" in s:
            templated = True
            for m in _TOKEN_RE.finditer(s):
                name = m.group(1)
                if name is None:
                    escapes += 1
                else:
                    counts[name] = counts.get(name, 0) + 1
    extra = {k: raw[k] for k in raw if k not in TASK_FIELDS}
    return Task(tid, request, deps, path, index, frozenset(counts), templated, extra,
                tuple(counts.items()), escapes)


def _show(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _closure(start: str, edges: Mapping[str, Sequence[str]]) -> set[str]:
    """Every node reachable from ``start`` along ``edges`` (not ``start`` itself)."""
    seen: set[str] = set()
    stack = list(edges[start])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(edges[n])
    return seen


def _find_cycle(tasks: Sequence[Task], by_id: Mapping[str, Task]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a] (a depends on b ...), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {t.id: WHITE for t in tasks}
    for root in tasks:
        if color[root.id] != WHITE:
            continue
        # iterative DFS with an explicit path stack
        stack: list[tuple[str, int]] = [(root.id, 0)]
        path: list[str] = [root.id]
        color[root.id] = GREY
        while stack:
            node, i = stack[-1]
            deps = by_id[node].depends_on
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if color[nxt] == GREY:
                    return path[path.index(nxt):] + [nxt]
                if color[nxt] == WHITE:
                    color[nxt] = GREY
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None


# --------------------------------------------------------------------------- placeholders


def _message_strings(messages: list) -> list[str]:
    """Every string placeholders apply to (see the module doc), in order."""
    out: list[str] = []
    for msg in messages:
        if isinstance(msg, dict):
            _content_strings(msg.get("content"), out)
    return out


def _content_strings(content: Any, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            t = block.get("type")
            if t == "text" and isinstance(block.get("text"), str):
                out.append(block["text"])
            elif t == "tool_result":
                _content_strings(block.get("content"), out)


def _substitute(s: str, answers: Mapping[str, str]) -> str:
    if "{{" not in s:
        return s

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name is None:
            return "{{"
        return answers[name]

    return _TOKEN_RE.sub(repl, s)


def _fill_content(content: Any, answers: Mapping[str, str]) -> Any:
    if isinstance(content, str):
        return _substitute(content, answers)
    if isinstance(content, list):
        out = []
        for block in content:
            if isinstance(block, dict):
                t = block.get("type")
                if t == "text" and isinstance(block.get("text"), str) and "{{" in block["text"]:
                    block = {**block, "text": _substitute(block["text"], answers)}
                elif t == "tool_result" and "content" in block:
                    block = {**block, "content": _fill_content(block["content"], answers)}
            out.append(block)
        return out
    return content


def fill_placeholders(task: Task, answers: Mapping[str, str]) -> dict[str, Any]:
    """The task's request body with placeholders replaced by ``answers[id]``.

    Returns a new top-level dict (and new message dicts where something
    changed); the task's own request is never modified. ``answers`` must hold
    every id in ``task.placeholders``.
    """
    body = dict(task.request)
    if not task.templated:
        return body
    messages = []
    for msg in task.request["messages"]:
        if isinstance(msg, dict) and "content" in msg:
            new = _fill_content(msg["content"], answers)
            if new is not msg["content"]:
                msg = {**msg, "content": new}
        messages.append(msg)
    body["messages"] = messages
    return body


def json_string_size(s: str) -> int:
    """Bytes ``s`` takes inside a JSON document written with
    ``json.dumps(..., ensure_ascii=False)`` and UTF-8, quotes excluded.

    JSON escapes each character on its own, so the size of a concatenation is
    the sum of the sizes of its parts.
    """
    return len(json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def request_size(request: Mapping[str, Any]) -> int:
    """Bytes of a request body as the proxy sends it (``json.dumps(body,
    ensure_ascii=False)`` in UTF-8)."""
    return len(json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def filled_size(task: Task, answer_sizes: Mapping[str, int]) -> int:
    """Bytes of ``fill_placeholders(task, answers)`` once serialized, computed
    without building it: the template's size, plus for each placeholder
    occurrence the size of its answer (``answer_sizes[id]``, as
    :func:`json_string_size` gives it) minus that of the placeholder, minus 2
    bytes per ``{{{{`` escape."""
    size = request_size(task.request)
    for name, count in task.placeholder_counts:
        size += count * (answer_sizes[name] - json_string_size("{{" + name + "}}"))
    return size - 2 * task.escapes


def answer_text(body: Any) -> str:
    """The answer's text: OpenAI ``choices[0].message.content``, Anthropic the
    concatenated ``text`` blocks of ``content``; ``""`` when there is none."""
    if not isinstance(body, dict):
        return ""
    choices = body.get("choices")
    if isinstance(choices, list):
        if not choices or not isinstance(choices[0], dict):
            return ""
        msg = choices[0].get("message")
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # some compatible servers answer with parts
            return "".join(p.get("text", "") for p in content
                           if isinstance(p, dict) and isinstance(p.get("text"), str))
        return ""
    content = body.get("content")
    if isinstance(content, list):
        return "".join(b["text"] for b in content
                       if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    if isinstance(content, str):
        return content
    return ""


def _error_message(answer: TaskAnswer) -> str:
    if answer.error:
        return answer.error
    body = answer.body
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            msg = err["message"]
        elif isinstance(err, str):
            msg = err
    return f"upstream answered {answer.status}" + (f": {msg}" if msg else "")


# --------------------------------------------------------------------------- executor

RunOne = Callable[[Task, dict], Awaitable[TaskAnswer]]
ProgressCallback = Callable[[int, int, int], Any]
ResultCallback = Callable[[TaskResult], Any]


async def run_task_graph(
    graph: TaskGraph,
    run_one: RunOne,
    *,
    max_workers: int,
    task_timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
    on_progress: ProgressCallback | None = None,
    on_result: ResultCallback | None = None,
    max_body_bytes: int | None = None,
) -> list[TaskResult]:
    """Run every task of ``graph``; return their results in input order.

    A task starts as soon as all its dependencies ended ``ok`` and fewer than
    ``max_workers`` tasks of this run are running; ready tasks start in input
    order. ``run_one(task, body)`` gets the request body with placeholders
    filled and runs under ``task_timeout`` seconds (``None`` or ``<= 0``: no
    limit); on timeout the call is cancelled. A task that raises, answers
    non-2xx or times out marks its dependants, transitively, ``skipped``;
    independent tasks carry on.

    ``on_progress(done, total, failures)`` is called once at the start and then
    after each task ends (a failure and the skips it causes are one call;
    ``failures`` counts every status but ``ok``). ``on_result(result)`` is
    called as each result is final (skipped ones included). Exceptions from
    either callback are logged and ignored.

    With ``max_body_bytes``, a task whose request, placeholders filled, would
    be larger than that once serialized (see :func:`filled_size`) is not sent:
    it ends ``error`` with ``http_status`` 413 and its dependants are skipped.
    The size is computed before the body is built, so an answer inserted many
    times never makes a huge body in memory.

    Cancelling the caller (client gone) cancels every running call.
    """
    if not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1, not {max_workers!r}")
    limit = task_timeout if task_timeout is not None and task_timeout > 0 else None

    tasks = graph.tasks
    total = len(tasks)
    t0 = clock()
    wall0 = time.time()
    results: dict[str, TaskResult] = {}
    answers: dict[str, str] = {}
    answer_sizes: dict[str, int] = {}  # id -> json_string_size(answer), computed on first use
    pending = {t.id: len(t.depends_on) for t in tasks}
    ready: deque[Task] = deque(t for t in tasks if not t.depends_on)
    dependants = graph.dependants
    by_id = graph.by_id
    failures = 0
    running = 0
    loop = asyncio.get_running_loop()
    all_done = loop.create_future()
    inflight: dict[asyncio.Task, Task] = {}
    stopping = False

    def notify_progress() -> None:
        if on_progress is not None:
            try:
                on_progress(len(results), total, failures)
            except Exception:  # a broken progress bar must not break the run
                log.exception("on_progress callback failed")

    def finalize(r: TaskResult) -> None:
        nonlocal failures
        results[r.id] = r
        if r.status != OK:
            failures += 1
        if on_result is not None:
            try:
                on_result(r)
            except Exception:
                log.exception("on_result callback failed")

    def skip_dependants(failed: str, root: str, root_status: str) -> None:
        stack = [failed]
        while stack:
            cur = stack.pop()
            for d in dependants[cur]:
                if d in results:
                    continue
                via = "" if cur == root else f" (via '{cur}')"
                finalize(TaskResult(
                    id=d, status=SKIPPED, blocked_by=root, run_started_at=wall0,
                    error=f"skipped: dependency '{root}' ended with status {root_status}{via}"))
                stack.append(d)

    def start_ready() -> None:
        nonlocal running
        while ready and running < max_workers and not stopping:
            task = ready.popleft()
            running += 1
            at = loop.create_task(run(task))
            inflight[at] = task
            at.add_done_callback(done)

    def done(at: asyncio.Task) -> None:
        nonlocal running
        task = inflight.pop(at)
        running -= 1
        if stopping:
            return
        if at.cancelled():  # cancelled by someone else than this run: report, never hang
            r = TaskResult(id=task.id, status=ERROR, error="CancelledError: the call was cancelled",
                           run_started_at=wall0)
        elif isinstance(at.exception(), Exception):  # e.g. run_one returned no TaskAnswer
            exc = at.exception()
            r = TaskResult(id=task.id, status=ERROR, error=f"{type(exc).__name__}: {exc}", run_started_at=wall0)
        elif at.exception() is not None:  # KeyboardInterrupt, SystemExit: end the run
            if not all_done.done():
                all_done.set_exception(at.exception())
            return
        else:
            r = at.result()
        finalize(r)
        if r.status == OK:
            for d in dependants[r.id]:
                pending[d] -= 1
                if pending[d] == 0 and d not in results:
                    ready.append(by_id[d])
        else:
            skip_dependants(r.id, r.id, r.status)
        notify_progress()
        if len(results) == total:
            if not all_done.done():
                all_done.set_result(None)
        else:
            start_ready()

    def too_large(task: Task) -> int | None:
        """The filled request's size when it is over ``max_body_bytes``, else None."""
        if max_body_bytes is None:
            return None
        for name, _ in task.placeholder_counts:
            if name not in answer_sizes:
                answer_sizes[name] = json_string_size(answers[name])
        size = filled_size(task, answer_sizes)
        return size if size > max_body_bytes else None

    async def run(task: Task) -> TaskResult:
        started = clock()
        oversize = too_large(task)
        if oversize is not None:
            finished = clock()
            return TaskResult(
                id=task.id, status=ERROR, http_status=413,
                error=(f"request too large: with its placeholders filled the request would be {oversize} bytes, "
                       f"more than max_body_bytes ({max_body_bytes}); it was not sent"),
                started=started - t0, finished=finished - t0,
                duration_ms=round((finished - started) * 1000, 3), run_started_at=wall0)
        try:
            body = fill_placeholders(task, answers) if task.templated else dict(task.request)
            if limit is None:
                answer = await run_one(task, body)
            else:
                cm = asyncio.timeout(limit)
                try:
                    async with cm:
                        answer = await run_one(task, body)
                except TimeoutError:
                    if not cm.expired():
                        raise
                    finished = clock()
                    return TaskResult(
                        id=task.id, status=TIMEOUT, error=f"timed out after {limit:g} s (task_timeout)",
                        started=started - t0, finished=finished - t0,
                        duration_ms=round((finished - started) * 1000, 3), run_started_at=wall0)
        except Exception as exc:
            finished = clock()
            return TaskResult(
                id=task.id, status=ERROR, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                started=started - t0, finished=finished - t0,
                duration_ms=round((finished - started) * 1000, 3), run_started_at=wall0)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if stopping or (current is not None and current.cancelling()):
                raise  # the run itself is being cancelled
            # a CancelledError that run_one raised on its own: an error, not a hang
            finished = clock()
            return TaskResult(
                id=task.id, status=ERROR, error="CancelledError: the call was cancelled",
                started=started - t0, finished=finished - t0,
                duration_ms=round((finished - started) * 1000, 3), run_started_at=wall0)
        finished = clock()
        status = answer.status
        good = isinstance(status, int) and 200 <= status < 300 and answer.error is None
        if good:
            answers[task.id] = answer_text(answer.body)
        return TaskResult(
            id=task.id, status=OK if good else ERROR, http_status=status, answer=answer.body,
            error=None if good else _error_message(answer),
            started=started - t0, finished=finished - t0, duration_ms=round((finished - started) * 1000, 3),
            tokens_before=answer.tokens_before, tokens_after=answer.tokens_after, cache=answer.cache,
            run_started_at=wall0)

    notify_progress()
    if total == 0:
        return []
    start_ready()
    try:
        await all_done
    finally:
        stopping = True
        if inflight:  # cancelled from outside: stop every running call
            running_now = list(inflight)
            for at in running_now:
                at.cancel()
            await asyncio.gather(*running_now, return_exceptions=True)
    return [results[t.id] for t in tasks]
