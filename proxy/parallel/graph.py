"""The task graph: a run's body checked completely before anything is sent.

    {"tasks": [
        {"id": "facts",   "request": {<chat request>}},
        {"id": "summary", "request": {<chat request using {{facts}}>},
         "depends_on": ["facts"], "upstream_path": <a chat path>}
    ]}

``id``            required; a non-empty string of at most 128 characters with no
                  whitespace and no ``{`` or ``}``; unique within the run.
``request``       required; the chat request body, an object with its dialect's
                  conversation (``messages``; Responses: ``input``), as the
                  dialect takes it. ``"stream": true`` and ``"background": true``
                  are refused: a task's answer is needed whole, in the
                  response. Every other field is passed through untouched.
``depends_on``    optional list of task ids (default ``[]``); the task starts only
                  after all of them finished with status ``ok``. Repeats are
                  ignored; order does not matter.
``upstream_path`` optional: a dialect's chat path (``/v1/chat/completions``,
                  ``/v1/messages``, ``/v1/responses``), which picks the task's
                  dialect (default: the default dialect's, Chat Completions).

A placeholder ``{{ID}}`` (see :mod:`.templates`) must name a dependency of its
task, direct or transitive: a dependency of a dependency also finished before
the task starts. Any problem raises :class:`TaskGraphError` naming it (-> 400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from ..dialects import DEFAULT, DIALECTS, Dialect
from ..errors import BadRequest
from .templates import Template, scan

DEFAULT_UPSTREAM_PATH = DEFAULT.chat_path
CHAT_PATHS = tuple(d.chat_path for d in DIALECTS.values())
TASK_FIELDS = ("id", "request", "depends_on", "upstream_path")
MAX_ID_LENGTH = 128

_ID_RE = re.compile(r"[^\s{}]+")


class TaskGraphError(BadRequest):
    """The run's body is unacceptable; ``str(err)`` names the problem (-> 400).

    ``task_id`` / ``index`` say which task, when the problem is one task's.
    """

    def __init__(self, message: str, *, task_id: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.index = index


@dataclass(frozen=True, eq=False)
class Task:
    id: str
    request: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    upstream_path: str = DEFAULT_UPSTREAM_PATH
    index: int = 0
    template: Template = Template()

    @property
    def dialect(self) -> str:
        return _dialect_of(self.upstream_path).name

    @property
    def placeholders(self) -> frozenset[str]:
        """The ids the task's messages name in placeholders."""
        return self.template.names


@dataclass(frozen=True, eq=False)
class TaskGraph:
    """Validated tasks in input order, plus the edges the executor needs."""

    tasks: tuple[Task, ...]
    by_id: Mapping[str, Task]
    #: id -> ids of the tasks that depend on it directly, in input order
    dependants: Mapping[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def sorter(self) -> TopologicalSorter[str]:
        """A prepared sorter over the tasks (raises CycleError on a cycle);
        each run drives its own, since a sorter is used up as tasks are done."""
        sorter: TopologicalSorter[str] = TopologicalSorter({t.id: t.depends_on for t in self.tasks})
        sorter.prepare()
        return sorter


def parse_task_graph(body: Any, max_tasks: int) -> TaskGraph:
    """Validate a run's body and build its graph; raise TaskGraphError naming the
    first problem found. Nothing is sent anywhere.

    An unknown task field is refused, so a typo such as ``dependsOn`` does not
    silently drop a dependency.
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

    by_id: dict[str, Task] = {}
    for index, raw in enumerate(raw_tasks):
        task = _parse_task(raw, index)
        if task.id in by_id:
            raise TaskGraphError(f"duplicate task id '{task.id}' (tasks[{by_id[task.id].index}] and tasks[{index}])",
                                 task_id=task.id, index=index)
        by_id[task.id] = task
    tasks = tuple(by_id.values())
    for t in tasks:
        for d in t.depends_on:
            if d not in by_id:
                raise TaskGraphError(f"task '{t.id}' depends on unknown task '{d}'", task_id=t.id, index=t.index)

    dependants: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.depends_on:
            dependants[d].append(t.id)
    graph = TaskGraph(tasks, by_id, {k: tuple(v) for k, v in dependants.items()})
    try:
        graph.sorter()
    except CycleError as exc:
        cycle = _dependency_order(exc.args[1], by_id)
        raise TaskGraphError("dependency cycle: " + " -> ".join(f"'{i}'" for i in cycle), task_id=cycle[0]) from None
    for t in tasks:
        _check_placeholders(t, by_id)
    return graph


def _dependency_order(cycle: list[str], by_id: Mapping[str, Task]) -> list[str]:
    """graphlib's cycle [a, b, ..., a] (a is a dependency of b) as the path
    'x depends on y' from the task listed first, so the message is stable."""
    ring = list(reversed(cycle))[:-1]
    start = min(range(len(ring)), key=lambda i: by_id[ring[i]].index)
    ring = ring[start:] + ring[:start]
    return ring + ring[:1]


def _check_placeholders(task: Task, by_id: Mapping[str, Task]) -> None:
    upstream: set[str] | None = None  # every transitive dependency, found when first needed
    for name in sorted(task.placeholders):
        if name in task.depends_on:
            continue
        if name in by_id and name != task.id:
            if upstream is None:
                upstream = _ancestors(task, by_id)
            if name in upstream:
                continue
        if name == task.id:
            why = "names the task itself"
        elif name not in by_id:
            why = "names no task of this run"
        else:
            why = f"names task '{name}', which is not among its dependencies (add it to depends_on)"
        raise TaskGraphError(
            f"task '{task.id}': placeholder {{{{{name}}}}} {why}; write {{{{{{{{{name}}}}} for a literal "
            f"'{{{{{name}}}}}'", task_id=task.id, index=task.index)


def _ancestors(task: Task, by_id: Mapping[str, Task]) -> set[str]:
    seen: set[str] = set()
    stack = list(task.depends_on)
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(by_id[d].depends_on)
    return seen


def _parse_task(raw: Any, index: int) -> Task:
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

    def refuse(problem: str) -> TaskGraphError:
        return TaskGraphError(f"task '{tid}'{problem}", task_id=tid, index=index)

    unknown = sorted(k for k in raw if k not in TASK_FIELDS)
    if unknown:
        raise refuse(f": unknown field {_show(unknown[0])} (a task has {', '.join(sorted(TASK_FIELDS))})")
    if "request" not in raw:
        raise refuse(" has no 'request'")
    request = raw["request"]
    if not isinstance(request, dict):
        raise refuse(f": 'request' must be an object, not {_kind(request)}")
    path = raw.get("upstream_path")
    if path is None:
        path = DEFAULT_UPSTREAM_PATH
    if path not in CHAT_PATHS:
        raise refuse(f": upstream_path must be {', '.join(repr(p) for p in CHAT_PATHS[:-1])} or "
                     f"{CHAT_PATHS[-1]!r}, not {_show(path)}")
    dialect = _dialect_of(path)
    field = dialect.conversation_field
    if field not in request:
        raise refuse(f": request has no {field!r}")
    conversation = request[field]
    if not isinstance(conversation, list):
        try:
            dialect.check_body({field: conversation})   # what else the dialect takes there (Responses: a string)
        except BadRequest:
            raise refuse(f": request.{field} must be a list, not {_kind(conversation)}") from None
    for flag in dialect.deferred_answer_fields:
        if request.get(flag) not in (None, False):
            raise refuse(f": request.{flag} must be false or absent; a task's answer is read whole")

    deps = raw.get("depends_on")
    if deps is None:
        deps = []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise refuse(f": 'depends_on' must be a list of task ids (strings), not {_show(deps)}")
    return Task(tid, request, tuple(dict.fromkeys(deps)), path, index, scan(conversation, field))


def _dialect_of(path: str) -> Dialect:
    return next(d for d in DIALECTS.values() if d.chat_path == path)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."

