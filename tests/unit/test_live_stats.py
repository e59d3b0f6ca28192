"""The dashboard's live stats (proxy/observability/stats.py): the breakdowns
per model and per upstream, the bound on client-chosen model names, the
cache figures, which requests count as upstream errors and as rewrites, and
all of it merged across workers."""

from __future__ import annotations

import json

from ctxwarden.observability import Telemetry
from ctxwarden.observability.record import RequestRecord
from ctxwarden.observability.stats import MODEL_NAME_CHARS, MODELS_TRACKED, LiveStats


def _chat(model: str = "gpt-4o", upstream: str = "openai", tokens: tuple[int, int] = (100, 60),
          costs: tuple[float, float] | None = (60.0, 100.0), rewrite: str = "compact", cache: str = "miss",
          status: int = 200, error_kind: str = "") -> RequestRecord:
    record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions", dialect="openai",
                           model=model, upstream=upstream, status=status, cache=cache, rewrite=rewrite,
                           error_kind=error_kind)
    record.tokens_before, record.tokens_after = tokens
    if costs is not None:
        record.cost_sent, record.cost_passthrough = costs
    return record


def _forwarded(upstream: str = "openai", status: int = 200, error_kind: str = "") -> RequestRecord:
    return RequestRecord(route="forward", method="GET", path="/v1/models", dialect="openai", upstream=upstream,
                         status=status, error_kind=error_kind)


def _feed(stats: LiveStats, records: list[RequestRecord]) -> LiveStats:
    for record in records:
        stats.observe(record)
    return stats


def _traffic() -> list[RequestRecord]:
    return [
        _chat("gpt-4o", tokens=(1000, 400), costs=(400.0, 1000.0)),
        _chat("gpt-4o", tokens=(10, 10), costs=None, rewrite="unchanged", cache="hit", upstream=""),
        _chat("claude-sonnet-4-5", upstream="anthropic", tokens=(500, 500), costs=(500.0, 500.0),
              rewrite="passthrough", cache="bypass"),
        _chat("gpt-4o-mini", tokens=(50, 50), costs=None, rewrite="unchanged", error_kind="timeout", status=504),
        _forwarded(error_kind="connect", status=502),
        _forwarded(status=200),
    ]


def _by_name(rows: list[dict]) -> dict:
    return {row["name"]: row for row in rows}


def test_each_model_and_upstream_has_its_figures_and_the_rows_add_up_to_the_totals() -> None:
    snapshot = _feed(LiveStats(), _traffic()).snapshot()
    models = _by_name(snapshot["by_model"])
    assert list(models) == ["gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"], "busiest first, then by name"
    assert (models["gpt-4o"]["requests"], models["gpt-4o"]["tokens_before"], models["gpt-4o"]["tokens_after"]) \
        == (2, 1010, 410)
    assert (models["gpt-4o"]["cost_sent"], models["gpt-4o"]["cost_passthrough"]) == (400.0, 1000.0)
    assert models["gpt-4o"]["bill_saved_ratio"] == 0.6
    assert models["claude-sonnet-4-5"]["bill_saved_ratio"] == 0.0
    assert models["gpt-4o-mini"]["upstream_errors"] == 1
    upstreams = _by_name(snapshot["by_upstream"])
    assert list(upstreams) == ["openai", "anthropic", ""], "'': answered without calling an upstream, last"
    assert (upstreams["openai"]["requests"], upstreams["openai"]["upstream_errors"]) == (4, 2)
    assert upstreams[""]["requests"] == 1
    # forwarded requests carry no model: the model rows add up to the chat requests
    chat_only = _feed(LiveStats(), [r for r in _traffic() if r.model]).snapshot()
    for figure in ("requests", "upstream_errors", "tokens_before", "tokens_after", "cost_sent", "cost_passthrough"):
        assert sum(row[figure] for row in snapshot["by_upstream"]) == snapshot[figure], figure
        assert sum(row[figure] for row in snapshot["by_model"]) == chat_only[figure], figure


def test_upstream_errors_are_what_the_metric_of_that_name_counts() -> None:
    telemetry = Telemetry()
    for record in _traffic() + [_chat(status=500), _forwarded(status=503)]:
        telemetry.start(record)
        telemetry.finish(record)
    snapshot = telemetry.stats.snapshot()
    text = telemetry.metrics.render().decode()
    metric = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("ctxwarden_upstream_errors_total{"))
    assert snapshot["upstream_errors"] == metric == 2, "a 5xx the upstream answered is relayed, not an error"
    assert snapshot["upstream_errors_by_kind"] == {"connect": 1, "timeout": 1}
    assert sum(second["errors"] for second in snapshot["series"]) == 2


def test_the_hit_rate_is_over_cacheable_requests_and_the_bypass_share_beside_it() -> None:
    records = [_chat(cache="hit"), _chat(cache="miss"), _chat(cache="miss"), _chat(cache="hit"),
               _chat(cache="bypass"), _forwarded(), _forwarded()]
    snapshot = _feed(LiveStats(), records).snapshot()
    assert (snapshot["cache_hits"], snapshot["cache_misses"], snapshot["cache_bypassed"]) == (2, 2, 1)
    assert snapshot["cache_hit_rate"] == 0.5
    assert snapshot["cache_bypass_ratio"] == 0.2, "of chat requests: a forwarded request is never cacheable"
    empty = LiveStats().snapshot()
    assert (empty["cache_hit_rate"], empty["cache_bypass_ratio"]) == (0.0, 0.0)


def test_the_rewrites_table_lists_only_requests_sent_rewritten() -> None:
    decisions = ["compact", "unchanged", "append", "passthrough", "shadow", "off", "excluded", "failed"]
    stats = _feed(LiveStats(), [_chat(rewrite=decision) for decision in decisions])
    rows = stats.snapshot()["recent_rewrites"]
    assert [row["decision"] for row in rows] == ["append", "compact"], "newest first"
    assert rows[0]["model"] == "gpt-4o" and rows[0]["upstream"] == "openai"
    assert (rows[0]["cost_sent"], rows[0]["cost_passthrough"]) == (60.0, 100.0)


def test_model_names_are_bounded_and_the_busy_models_keep_their_rows() -> None:
    stats = LiveStats()
    busy = [f"model-{i}" for i in range(MODELS_TRACKED - 1)]
    _feed(stats, [_chat(name) for name in busy for _ in range(3)])
    invented = [f"invented-{i}" for i in range(500)] + ["x" * 10_000]
    _feed(stats, [_chat(name) for name in invented])
    snapshot = stats.snapshot()
    named = [row["name"] for row in snapshot["by_model"] if row["name"] is not None]
    assert len(named) == MODELS_TRACKED
    assert set(busy) < set(named), "a client inventing names churns one row"
    assert named[-1] == "x" * MODEL_NAME_CHARS
    other = snapshot["by_model"][-1]
    assert other["name"] is None and other["requests"] == len(invented) - 1
    assert sum(row["requests"] for row in snapshot["by_model"]) == snapshot["requests"]
    assert len(json.dumps(stats.state())) < 20_000


def test_merged_workers_break_down_like_one_process() -> None:
    traffic = _traffic() * 3
    a, b, alone = LiveStats(), LiveStats(), _feed(LiveStats(), traffic)
    _feed(a, traffic[::2])
    _feed(b, traffic[1::2])
    merged = LiveStats.merged(json.loads(json.dumps(s.state())) for s in (a, b)).snapshot()
    expected = alone.snapshot()
    for key in ("requests", "upstream_errors", "upstream_errors_by_kind", "by_model", "by_upstream",
                "cache_hits", "cache_misses", "cache_bypassed", "cache_hit_rate", "cache_bypass_ratio",
                "bill_saved_ratio"):
        assert merged[key] == expected[key], key
    assert [r["decision"] for r in merged["recent_rewrites"]] == [r["decision"] for r in expected["recent_rewrites"]]


def test_merged_workers_keep_the_busiest_models_by_name() -> None:
    workers = [LiveStats() for _ in range(3)]
    for w, stats in enumerate(workers):
        # each worker its own full table: the merge sees 3 x MODELS_TRACKED names
        _feed(stats, [_chat(f"w{w}-m{i}") for i in range(MODELS_TRACKED) for _ in range(1 + (w == 1))])
    merged = LiveStats.merged(s.state() for s in workers).snapshot()
    named = [row["name"] for row in merged["by_model"] if row["name"] is not None]
    assert named == sorted(f"w1-m{i}" for i in range(MODELS_TRACKED)), "the busiest worker's models, by name"
    assert merged["by_model"][-1]["requests"] == 2 * MODELS_TRACKED
    assert sum(row["requests"] for row in merged["by_model"]) == merged["requests"]
