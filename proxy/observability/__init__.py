"""What the proxy reports about the requests it answers.

One flow: a request's RequestRecord (record.py) is created as the request
arrives and handed to Telemetry.start; the gateway and the relay fill it in
along the way; when the response has been sent, Telemetry.finish is called
once, which times the record and hands it to the Prometheus metrics
(metrics.py), the dashboard's live stats (stats.py) and the request log
(logs.py)."""

from __future__ import annotations

from .logs import log_request
from .metrics import Metrics
from .record import RequestRecord
from .stats import LiveStats


class Telemetry:
    """Where finished requests go; one per process, outliving reloads."""

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
