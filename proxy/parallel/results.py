"""What a run reports: one result per task, and the run's summary.

Statuses:

``ok``       run_one answered with a 2xx status and a readable JSON body.
``error``    run_one raised, or answered with a non-2xx status (``http_status``
             and ``answer`` then hold the upstream's status and error body), or
             with a 2xx body that could not be read (see ``TaskAnswer.from_http``);
             or the task's request, placeholders filled, would have been larger
             than ``max_body_bytes`` (``http_status`` 413, nothing was sent).
``timeout``  the task took longer than ``task_timeout``; its call was cancelled.
``skipped``  not run because a dependency (direct or transitive) did not end
             ``ok``; ``blocked_by`` names the task that failed and ``error`` says so.

``started`` / ``finished`` are seconds since the run started, from the monotonic
clock (``None`` for a skipped task); ``duration_ms`` is their difference in
milliseconds. ``to_dict()`` also gives ``started_at`` / ``finished_at``,
wall-clock ISO 8601 UTC times (the run's ``time.time()`` start plus those
offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

OK, ERROR, TIMEOUT, SKIPPED = "ok", "error", "timeout", "skipped"
STATUSES = (OK, ERROR, TIMEOUT, SKIPPED)


@dataclass(frozen=True)
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
    out: dict[str, Any] = {"total": len(results), **{s: 0 for s in STATUSES}}
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
    moment = datetime.fromtimestamp(anchor + offset, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
