"""What the worker processes of one `serve` share, so that /metrics and
/_ctxwarden/stats answer the same whichever worker a scrape lands on.

`serve` with workers > 1 makes a private directory (removed when it exits)
before any worker starts and names it in the environment the workers inherit:

    metrics/   prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR),
               which every worker writes as it counts and any worker reads whole
    stats/     each worker's live stats, one JSON file per process id, written
               every PUBLISH_SECONDS while it changes and once more on exit;
               the stats endpoint reads them all merged

A worker that exits keeps its files: its counts stay in the totals, as
Prometheus counters must across a restart (SIGHUP restarts every worker).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .stats import LiveStats

SHARED_DIR_ENV = "CTXWARDEN_SHARED_DIR"
# prometheus-client reads it when imported: set before a worker imports anything.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_SECONDS = 1.0


@dataclass(frozen=True)
class SharedDir:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @classmethod
    def create(cls, root: str) -> SharedDir:
        """Lay out `root` (an empty private directory) and name it for the
        worker processes this process starts from now on."""
        shared = cls(Path(root))
        shared.metrics.mkdir()
        shared.stats.mkdir()
        os.environ[SHARED_DIR_ENV] = str(shared.root)
        os.environ[METRICS_DIR_ENV] = str(shared.metrics)
        return shared

    @classmethod
    def from_environment(cls) -> SharedDir | None:
        """The directory a worker's parent created; None in a single process.
        Both variables must agree, or the metrics would not be in the files read."""
        root = os.environ.get(SHARED_DIR_ENV)
        if not root:
            return None
        shared = cls(Path(root))
        if os.environ.get(METRICS_DIR_ENV) != str(shared.metrics):
            raise RuntimeError(f"${METRICS_DIR_ENV} must be {shared.metrics} when ${SHARED_DIR_ENV} is set")
        return shared


class SharedStats:
    """This worker's LiveStats published to the stats directory; all workers' read merged."""

    def __init__(self, stats: LiveStats, directory: Path) -> None:
        self.stats = stats
        self.directory = directory
        self._path = directory / f"{os.getpid()}.json"
        self._published: int | None = None

    def publish(self) -> None:
        """Write this worker's state if a request finished since the last time;
        by rename, so a reader never sees half a file."""
        if self._published == self.stats.requests:
            return
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.stats.state()))
        os.replace(temporary, self._path)
        self._published = self.stats.requests

    def snapshot(self) -> dict[str, object]:
        """Every worker's figures merged; this worker's up to now, the others'
        as of their last publish (at most PUBLISH_SECONDS old)."""
        self.publish()
        states = []
        for path in self.directory.glob("*.json"):
            try:
                states.append(json.loads(path.read_bytes()))
            except (OSError, ValueError):   # pragma: no cover - a directory tampered with
                continue
        return LiveStats.merged(states).snapshot()
