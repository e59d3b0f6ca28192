"""What the proxy reports about the requests it answers.

One flow: a request's RequestRecord (record.py) is created as the request
arrives and handed to Telemetry.start; the gateway and the relay fill it in
along the way; when the response has been sent, Telemetry.finish is called
once, which times the record and hands it to the Prometheus metrics
(metrics.py), the dashboard's live stats (stats.py) and the request log
(logs.py).

With several workers, the metrics and the live stats each worker reports are
shared with the others (shared.py), so any worker answers for all."""

from __future__ import annotations

import anyio

from .logs import log_request
from .metrics import Metrics
from .record import RequestRecord
from .shared import PUBLISH_SECONDS, SharedDir, SharedStats
from .stats import LiveStats


class Telemetry:
    """Where finished requests go; one per process, outliving reloads."""

    def __init__(self, shared: SharedDir | None = None) -> None:
        self.metrics = Metrics(shared.metrics if shared else None)
        self.stats = LiveStats()
        self.shared_stats = SharedStats(self.stats, shared.stats) if shared else None

    def stats_snapshot(self) -> dict[str, object]:
        """The live stats of this process, or of every worker."""
        return self.shared_stats.snapshot() if self.shared_stats else self.stats.snapshot()

    async def share(self) -> None:
        """With several workers: keep this worker's figures before the others
        (runs until cancelled)."""
        assert self.shared_stats is not None
        while True:
            await anyio.sleep(PUBLISH_SECONDS)
            self.metrics.sample()
            self.shared_stats.publish()

    def close(self) -> None:
        """The process stops serving: its last figures are published, its gauges dropped."""
        if self.shared_stats is not None:
            self.shared_stats.publish()
        self.metrics.close()

    def start(self, record: RequestRecord) -> None:
        self.metrics.started()

    def finish(self, record: RequestRecord) -> None:
        record.finish()
        self.metrics.finished(record)
        self.stats.observe(record)
        log_request(record)
