"""One finished request, as the metrics, the live stats and the request log
see it (proxy/observability)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ctxwarden.observability import Telemetry
from ctxwarden.observability.metrics import LATENCY_BUCKETS, Metrics
from ctxwarden.observability.record import RequestRecord
from ctxwarden.observability.shared import SharedStats
from ctxwarden.observability.stats import LiveStats


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


def _finished(stats: LiveStats, total_seconds: float, tokens: tuple[int, int] | None = None,
              status: int = 200) -> None:
    record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions", dialect="openai",
                           status=status, cache="miss", rewrite="compact")
    if tokens:
        record.tokens_before, record.tokens_after = tokens
    record.total_seconds = total_seconds
    stats.observe(record)


def test_retries_count_on_the_upstream_that_failed_and_fallbacks_on_the_one_left() -> None:
    stats = LiveStats()
    record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions", dialect="openai",
                           model="gpt-4o", upstream="backup", status=200, cache="miss")
    record.retries = [("primary", "connect"), ("primary", "503")]
    record.fallbacks = [("primary", "backup")]
    stats.observe(record)
    snapshot = stats.snapshot()
    assert (snapshot["retries"], snapshot["fallbacks"]) == (2, 1)
    rows = {row["name"]: row for row in snapshot["by_upstream"]}
    assert (rows["primary"]["requests"], rows["primary"]["retries"], rows["primary"]["fallbacks"]) == (0, 2, 1)
    assert (rows["backup"]["requests"], rows["backup"]["retries"], rows["backup"]["fallbacks"]) == (1, 0, 0)
    assert snapshot["by_model"][0]["retries"] == 2
    merged = LiveStats.merged([json.loads(json.dumps(stats.state()))] * 2).snapshot()
    assert (merged["retries"], merged["fallbacks"]) == (4, 2)


def test_workers_stats_merged_are_the_sums_and_the_newest_rewrites() -> None:
    a, b, alone = LiveStats(), LiveStats(), LiveStats()
    for seconds, tokens, status in ((0.1, (100, 40), 200), (0.3, None, 502), (0.2, (50, 50), 200)):
        _finished(a, seconds, tokens, status)
        _finished(alone, seconds, tokens, status)
    _finished(b, 0.4, (1000, 100))
    _finished(alone, 0.4, (1000, 100))
    merged = LiveStats.merged(json.loads(json.dumps(s.state())) for s in (a, b)).snapshot()
    expected = alone.snapshot()
    for key in ("requests", "upstream_errors", "tokens_saved", "reduction_ratio", "cache_misses", "latency_ms"):
        assert merged[key] == expected[key], key
    assert sum(s["requests"] for s in merged["series"]) == 4
    assert [r["tokens_before"] for r in merged["recent_rewrites"]] == [1000, 50, 100], "newest first"
    assert merged["uptime_seconds"] >= expected["uptime_seconds"] - 0.1, "from the oldest worker's start"


def test_a_worker_publishes_its_stats_and_reads_everyone_s(tmp_path) -> None:
    other, own = LiveStats(), LiveStats()
    _finished(other, 0.1, (10, 5))
    (tmp_path / "1.json").write_text(json.dumps(other.state()))
    shared = SharedStats(own, tmp_path)
    _finished(own, 0.2, (20, 5))
    assert shared.snapshot()["requests"] == 2
    published = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert LiveStats.merged([published]).requests == 1
    assert not list(tmp_path.glob("*.tmp"))


def _samples(text: bytes, prefix: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
            if line.startswith(prefix) and "_created" not in line}


def test_requests_summed_between_scrapes_expose_what_observing_each_would() -> None:
    """Finished requests are summed until the next scrape (or worker's sample);
    the histograms then read as if every value had been observed on its own."""
    summed = []

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(st.lists(st.one_of(st.sampled_from([*LATENCY_BUCKETS, 0.0, 1e4]),
                                       st.floats(0, 400, allow_nan=False)), min_size=1, max_size=12),
                    min_size=1, max_size=4))
    def exposition_matches(between_scrapes: list[list[float]]) -> None:
        metrics = Metrics()
        reference_registry = CollectorRegistry()
        reference = Histogram("ctxwarden_request_seconds", "", ["route"], buckets=LATENCY_BUCKETS,
                              registry=reference_registry)
        for finished in between_scrapes:
            for seconds in finished:
                metrics.started()
                record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions",
                                       dialect="openai", status=200, cache="miss")
                record.total_seconds = seconds
                metrics.finished(record)
                reference.labels("chat_completions").observe(seconds)
            got = _samples(metrics.render(), "ctxwarden_request_seconds")
            summed.append(len(finished) > 1)
        want = _samples(generate_latest(reference_registry), "ctxwarden_request_seconds")
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert got[name] == (pytest.approx(value) if name.startswith("ctxwarden_request_seconds_sum")
                                 else value), name
        assert _samples(metrics.render(), "ctxwarden_requests_total")[
            'ctxwarden_requests_total{cache="miss",dialect="openai",route="chat_completions",status="200"}'
        ] == sum(len(finished) for finished in between_scrapes)
        assert _samples(metrics.render(), "ctxwarden_requests_in_flight") == {"ctxwarden_requests_in_flight": 0}

    exposition_matches()
    assert sum(summed) >= 100, "too few scrapes summed several requests"
