"""One finished request, as the metrics, the live stats and the request log
see it (proxy/observability)."""

from __future__ import annotations

import logging

import pytest

from ctxwarden.observability import Telemetry
from ctxwarden.observability.record import RequestRecord


def _metric(telemetry: Telemetry, line_start: str) -> float:
    for line in telemetry.metrics.render().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics")


def test_a_finished_record_reaches_metrics_stats_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ctxwarden.request")
    telemetry = Telemetry()
    record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions", dialect="openai")
    telemetry.start(record)
    assert _metric(telemetry, "ctxwarden_requests_in_flight") == 1
    record.upstream, record.status, record.cache, record.rewrite = "openai", 200, "miss", "compact"
    record.tokens_before, record.tokens_after = 1000, 400
    record.cost_sent, record.cost_passthrough = 400.0, 1000.0

    telemetry.finish(record)

    assert record.total_seconds > 0
    assert _metric(telemetry, "ctxwarden_requests_in_flight") == 0
    assert _metric(telemetry, 'ctxwarden_requests_total{cache="miss",dialect="openai",route="chat_completions",'
                              'status="200"}') == 1
    assert _metric(telemetry, 'ctxwarden_tokens_saved_total{dialect="openai"}') == 600
    assert _metric(telemetry, 'ctxwarden_rewrites_total{decision="compact",dialect="openai"}') == 1
    stats = telemetry.stats.snapshot()
    assert (stats["requests"], stats["tokens_saved"], stats["cache_misses"]) == (1, 600, 1)
    assert stats["bill_saved_ratio"] == 0.6
    lines = [r.fields for r in caplog.records if r.name == "ctxwarden.request"]
    assert len(lines) == 1
    assert lines[0]["status"] == 200 and lines[0]["tokens_after"] == 400 and lines[0]["cache"] == "miss"


def test_a_failed_request_counts_as_an_upstream_error() -> None:
    telemetry = Telemetry()
    record = RequestRecord(route="forward", method="GET", path="/v1/models", dialect="openai")
    telemetry.start(record)
    record.upstream, record.status, record.error_kind = "openai", 502, "connect"
    telemetry.finish(record)
    assert _metric(telemetry, 'ctxwarden_upstream_errors_total{kind="connect",upstream="openai"}') == 1
    assert telemetry.stats.snapshot()["upstream_errors"] == 1
    assert 'ctxwarden_rewrites_total{' not in telemetry.metrics.render().decode(), "no rewrite without tokens"
