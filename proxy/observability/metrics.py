"""Prometheus metrics, on a registry of the app's own so that several apps in
one process (tests) never share counters.

Label values are bounded: routes, dialects, status codes, cache outcomes and
rewrite decisions are closed sets; upstream names come from the config, never
from clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..cache.backend import CacheBackend
from .record import RequestRecord

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1, 2.5, 5, 10, 30, 60, 120, 300)
REWRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


class Gate(Protocol):
    """What the metrics read of the upstream gate."""

    def snapshot(self) -> dict[str, int | float]: ...


class ReplicaCounts(Protocol):
    """What the metrics read of cross-replica coalescing (cache/distributed.py)."""

    coalesced: int
    fallbacks: dict[str, int]


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ctxwarden_requests", "Requests answered",
                                ["route", "dialect", "status", "cache"], registry=r)
        self.tokens_before = Counter("ctxwarden_input_tokens_before", "Input tokens of chat requests as received",
                                     ["dialect"], registry=r)
        self.tokens_after = Counter("ctxwarden_input_tokens_after", "Input tokens of chat requests as sent upstream",
                                    ["dialect"], registry=r)
        self.tokens_saved = Counter("ctxwarden_tokens_saved", "Input tokens removed by the rewrite",
                                    ["dialect"], registry=r)
        self.cost_sent = Counter("ctxwarden_input_cost_sent", "Estimated input cost of chat requests as sent, "
                                 "in input-token units with the provider's prompt cache priced in",
                                 ["dialect"], registry=r)
        self.cost_passthrough = Counter("ctxwarden_input_cost_passthrough", "Estimated input cost the same chat "
                                        "requests would have had unchanged, in the same units",
                                        ["dialect"], registry=r)
        self.rewrites = Counter("ctxwarden_rewrites", "Chat requests by rewrite decision",
                                ["dialect", "decision"], registry=r)
        self.rewrite_seconds = Histogram("ctxwarden_rewrite_seconds", "Time to count and rewrite a chat request",
                                         ["dialect"], buckets=REWRITE_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("ctxwarden_upstream_seconds", "Time until the upstream's response headers",
                                          ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("ctxwarden_request_seconds", "Total time until the response was sent",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.proxy_overhead_seconds = Histogram(
            "ctxwarden_proxy_overhead_seconds", "Time in the proxy before the upstream call: the latency it adds",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("ctxwarden_upstream_errors", "Upstream failures by kind",
                                       ["upstream", "kind"], registry=r)
        self.in_flight = Gauge("ctxwarden_requests_in_flight", "Requests being answered", registry=r)
        self.parallel_tasks = Gauge("ctxwarden_parallel_tasks_in_flight", "Parallel tasks running", registry=r)
        self._cache_backends: list[CacheBackend] = []
        r.register(_CacheBackendCollector(self._cache_backends))
        self._replicas: list[ReplicaCounts] = []
        r.register(_ReplicaCollector(self._replicas))
        self._gates: list[Gate] = []
        r.register(_GateCollector(self._gates))
        self.config_reloads = Counter("ctxwarden_config_reloads", "Config reload attempts", ["result"], registry=r)
        self.config_last_reload_ok = Gauge("ctxwarden_config_last_reload_successful",
                                           "1 when the last reload attempt succeeded", registry=r)
        self.config_last_reload_ok.set(1)

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.route, record.dialect or "none", str(record.status), record.cache).inc()
        self.request_seconds.labels(record.route).observe(record.total_seconds)
        if record.upstream:
            self.upstream_seconds.labels(record.upstream).observe(record.upstream_seconds)
            self.proxy_overhead_seconds.labels(record.route).observe(record.overhead_seconds)
        if record.error_kind:
            self.upstream_errors.labels(record.upstream or "none", record.error_kind).inc()
        if record.tokens_before is not None and record.tokens_after is not None:
            self.tokens_before.labels(record.dialect).inc(record.tokens_before)
            self.tokens_after.labels(record.dialect).inc(record.tokens_after)
            self.tokens_saved.labels(record.dialect).inc(record.tokens_saved)
            self.rewrites.labels(record.dialect, record.rewrite or "none").inc()
            if record.cost_sent is not None and record.cost_passthrough is not None:
                self.cost_sent.labels(record.dialect).inc(record.cost_sent)
                self.cost_passthrough.labels(record.dialect).inc(record.cost_passthrough)
            self.rewrite_seconds.labels(record.dialect).observe(record.rewrite_seconds)

    def watch_cache_backend(self, backend: CacheBackend) -> None:
        """Export a cache backend's own failure count (Redis keeps one)."""
        self._cache_backends.append(backend)

    def watch_replica_coalescing(self, replicas: ReplicaCounts) -> None:
        """Export cross-replica coalescing's counts (Redis backend)."""
        self._replicas.append(replicas)

    def watch_gate(self, gate: Gate) -> None:
        """Export the upstream gate's slots in use and waiting, by kind."""
        self._gates.append(gate)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheBackendCollector(Collector):
    def __init__(self, backends: list[CacheBackend]) -> None:
        self._backends = backends

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("ctxwarden_cache_backend_failures", "Cache backend operations that failed",
                                     labels=["backend"])
        for backend in self._backends:
            family.add_metric([backend.name], getattr(backend, "failures", 0))
        yield family


class _ReplicaCollector(Collector):
    def __init__(self, replicas: list[ReplicaCounts]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[CounterMetricFamily]:
        if not self._replicas:  # not on Redis: nothing to report
            return
        coalesced = CounterMetricFamily(
            "ctxwarden_cache_replica_coalesced", "Requests served the answer another replica's identical "
            "request fetched (cross-replica coalescing)")
        fallbacks = CounterMetricFamily(
            "ctxwarden_cache_replica_fallbacks", "Requests that waited for another replica's identical request "
            "and then called upstream themselves, by reason", labels=["reason"])
        for replicas in self._replicas:
            coalesced.add_metric([], replicas.coalesced)
            for reason, count in replicas.fallbacks.items():
                fallbacks.add_metric([reason], count)
        yield coalesced
        yield fallbacks


class _GateCollector(Collector):
    def __init__(self, gates: list[Gate]) -> None:
        self._gates = gates

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily("ctxwarden_upstream_slots_in_use", "Upstream gate slots held", labels=["kind"])
        waiting = GaugeMetricFamily("ctxwarden_upstream_slots_waiting", "Callers queued for an upstream slot",
                                    labels=["kind"])
        for gate in self._gates:
            snapshot = gate.snapshot()
            in_use.add_metric(["interactive"], snapshot["interactive_in_use"])
            in_use.add_metric(["fanout"], snapshot["fanout_in_use"])
            waiting.add_metric(["interactive"], snapshot["waiting_interactive"])
            waiting.add_metric(["fanout"], snapshot["waiting_fanout"])
        yield in_use
        yield waiting
