"""Where finished requests go: Prometheus metrics, live stats, the request log."""

from __future__ import annotations

from .logs import log_request
from .metrics import Metrics
from .records import RequestRecord
from .stats import LiveStats


class Telemetry:
    """Where finished requests go: metrics, live stats, the request log."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.stats = LiveStats()

    def start(self, record: RequestRecord) -> None:
        self.metrics.in_flight.inc()

    def finish(self, record: RequestRecord) -> None:
        record.finish()
        self.metrics.in_flight.dec()
        self.metrics.observe(record)
        self.stats.observe(record)
        log_request(record)
