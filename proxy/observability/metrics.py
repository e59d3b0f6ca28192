"""Prometheus metrics, on a registry of the app's own so that several apps in
one process (tests) never share counters.

With several workers (shared.py), prometheus-client's multiprocess mode keeps
every value in files all workers read: counters and histograms add up over the
workers, dead ones included; gauges say how (multiprocess_mode) and count live
workers only. What finished requests report is summed in the process and
handed to prometheus-client by sample(), with the values a single process
would read when scraped (requests in flight, the gate's slots, the cache
backend's failure count): before each scrape and, with several workers, every
second by each worker. The other workers' figures are then up to a second old.

Label values are bounded: routes, dialects, status codes, cache outcomes and
rewrite decisions are closed sets; upstream names come from the config, never
from clients."""

from __future__ import annotations

import bisect
import math
import os
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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


class _Pending:
    """What finished requests reported since the last flush, summed by metric
    and label values: a request reports to up to ten children, and each
    prometheus-client update takes a lock (and with several workers writes a
    memory-mapped file), several times the cost of adding to a dict. Label
    values are bounded (above), so are the dicts."""

    __slots__ = ("counts", "timings")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[str, ...]], float] = {}
        # per histogram child: [sum, then one count per bucket, +Inf last]
        self.timings: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def add(self, metric: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0.0) + amount

    def timed(self, metric: str, labels: tuple[str, ...], seconds: float, bounds: tuple[float, ...]) -> None:
        key = (metric, labels)
        sums = self.timings.get(key)
        if sums is None:
            sums = self.timings[key] = [0.0] * (len(bounds) + 1)
        sums[0] += seconds
        # a histogram bucket counts what is at most its bound
        sums[1 + bisect.bisect_left(bounds, seconds)] += 1


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        """`multiprocess_dir`: prometheus-client's multiprocess directory, when
        this is one of several workers; it must be $PROMETHEUS_MULTIPROC_DIR."""
        self.multiprocess_dir = multiprocess_dir
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
        # reason: a status code, "connect" or "timeout" (retrying.py); upstream names come from the config
        self.upstream_retries = Counter("ctxwarden_upstream_retries", "Upstream calls repeated after a failure, "
                                        "by upstream and reason", ["upstream", "reason"], registry=r)
        self.upstream_fallbacks = Counter("ctxwarden_upstream_fallbacks", "Requests handed from a failed upstream "
                                          "to its next fallback", ["from", "to"], registry=r)
        self.in_flight = Gauge("ctxwarden_requests_in_flight", "Requests being answered",
                               registry=r, multiprocess_mode="livesum")
        self.parallel_tasks = Gauge("ctxwarden_parallel_tasks_in_flight", "Parallel tasks running",
                                    registry=r, multiprocess_mode="livesum")
        self.cache_backend_failures = Counter("ctxwarden_cache_backend_failures",
                                              "Cache backend operations that failed", ["backend"], registry=r)
        self.slots_in_use = Gauge("ctxwarden_upstream_slots_in_use", "Upstream gate slots held", ["kind"],
                                  registry=r, multiprocess_mode="livesum")
        self.slots_waiting = Gauge("ctxwarden_upstream_slots_waiting", "Callers queued for an upstream slot",
                                   ["kind"], registry=r, multiprocess_mode="livesum")
        self.replica_coalesced = Counter(
            "ctxwarden_cache_replica_coalesced", "Requests served the answer another replica's identical "
            "request fetched (cross-replica coalescing)", registry=r)
        self.replica_fallbacks = Counter(
            "ctxwarden_cache_replica_fallbacks", "Requests that waited for another replica's identical request "
            "and then called upstream themselves, by reason", ["reason"], registry=r)
        # The reason is "missing" or "wrong": never the key, nor the key's name.
        self.client_key_refusals = Counter(
            "ctxwarden_client_key_refusals", "Requests refused with 401 for a missing or wrong client key",
            ["reason"], registry=r)
        self._cache_backend: CacheBackend | None = None
        self._replicas: ReplicaCounts | None = None
        self._counted: dict[tuple[str, str], int] = {}   # totals already added, by metric and label
        self._gate: Gate | None = None
        # Each worker reloads the file on its own: a reload is counted once per worker.
        self.config_reloads = Counter("ctxwarden_config_reloads", "Config reload attempts", ["result"], registry=r)
        # 0 as long as any worker's last reload attempt was refused.
        self.config_last_reload_ok = Gauge("ctxwarden_config_last_reload_successful",
                                           "1 when the last reload attempt succeeded",
                                           registry=r, multiprocess_mode="livemin")
        self.config_last_reload_ok.set(1)
        self._pending = _Pending()
        self._in_flight = 0
        latency, rewrite = (*LATENCY_BUCKETS, math.inf), (*REWRITE_BUCKETS, math.inf)
        self._bounds = {"request_seconds": latency, "upstream_seconds": latency,
                        "proxy_overhead_seconds": latency, "rewrite_seconds": rewrite}
        # labelled children by metric and label values: labels() validates them
        # and takes a lock on every call
        self._children: dict[tuple[str, tuple[str, ...]], Counter | Histogram] = {}

    def started(self) -> None:
        """A request came in (the in-flight gauge learns of it when sampled)."""
        self._in_flight += 1

    def finished(self, record: RequestRecord) -> None:
        """A request was answered: its figures wait until the next sample()."""
        self._in_flight -= 1
        add, timed, bounds = self._pending.add, self._pending.timed, self._bounds
        add("requests", (record.route, record.dialect or "none", str(record.status), record.cache))
        timed("request_seconds", (record.route,), record.total_seconds, bounds["request_seconds"])
        if record.upstream:
            timed("upstream_seconds", (record.upstream,), record.upstream_seconds, bounds["upstream_seconds"])
            timed("proxy_overhead_seconds", (record.route,), record.overhead_seconds,
                  bounds["proxy_overhead_seconds"])
        if record.error_kind:
            add("upstream_errors", (record.upstream or "none", record.error_kind))
        for upstream, reason in record.retries:
            add("upstream_retries", (upstream, reason))
        for failed, next_one in record.fallbacks:
            add("upstream_fallbacks", (failed, next_one))
        if record.tokens_before is not None and record.tokens_after is not None:
            dialect = (record.dialect,)
            add("tokens_before", dialect, record.tokens_before)
            add("tokens_after", dialect, record.tokens_after)
            add("tokens_saved", dialect, record.tokens_saved)
            add("rewrites", (record.dialect, record.rewrite or "none"))
            if record.cost_sent is not None and record.cost_passthrough is not None:
                add("cost_sent", dialect, record.cost_sent)
                add("cost_passthrough", dialect, record.cost_passthrough)
            timed("rewrite_seconds", dialect, record.rewrite_seconds, bounds["rewrite_seconds"])

    def _flush(self) -> None:
        """Hand what finished requests reported to prometheus-client."""
        pending, self._pending = self._pending, _Pending()
        for key, amount in pending.counts.items():
            self._child(key).inc(amount)
        for key, sums in pending.timings.items():
            child = self._child(key)
            # Histogram.observe takes one value; these are many, summed. Its
            # children's _sum and _buckets are the values it would update
            # (test_observability checks the exposition is the same).
            child._sum.inc(sums[0])
            for bucket, count in zip(child._buckets, sums[1:]):
                if count:
                    bucket.inc(count)

    def _child(self, key: tuple[str, tuple[str, ...]]) -> Counter | Histogram:
        child = self._children.get(key)
        if child is None:
            name, labels = key
            child = self._children[key] = getattr(self, name).labels(*labels)
        return child

    def watch_cache_backend(self, backend: CacheBackend) -> None:
        """Export a cache backend's own failure count (Redis keeps one)."""
        self._cache_backend = backend
        self.cache_backend_failures.labels(backend.name)

    def watch_replica_coalescing(self, replicas: ReplicaCounts) -> None:
        """Export cross-replica coalescing's counts (Redis backend)."""
        self._replicas = replicas

    def watch_gate(self, gate: Gate) -> None:
        """Export the upstream gate's slots in use and waiting, by kind."""
        self._gate = gate
        self.sample()

    def sample(self) -> None:
        """Copy what waits and the watched gate's and cache backend's figures into the metrics."""
        self._flush()
        self.in_flight.set(self._in_flight)
        if self._gate is not None:
            snapshot = self._gate.snapshot()
            for kind in ("interactive", "fanout"):
                self.slots_in_use.labels(kind).set(snapshot[f"{kind}_in_use"])
                self.slots_waiting.labels(kind).set(snapshot[f"waiting_{kind}"])
        if self._cache_backend is not None:
            name = self._cache_backend.name
            self._add_up(self.cache_backend_failures.labels(name), ("failures", name),
                         getattr(self._cache_backend, "failures", 0))
        if self._replicas is not None:
            self._add_up(self.replica_coalesced, ("coalesced", ""), self._replicas.coalesced)
            for reason, count in self._replicas.fallbacks.items():
                self._add_up(self.replica_fallbacks.labels(reason), ("fallbacks", reason), count)

    def _add_up(self, counter: Counter, key: tuple[str, str], total: int) -> None:
        """Bring a counter up to a running total kept elsewhere (a counter only adds)."""
        counter.inc(total - self._counted.get(key, 0))
        self._counted[key] = total

    def render(self) -> bytes:
        self.sample()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiprocess_dir)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, path=str(self.multiprocess_dir))
        return generate_latest(everyone)

    def close(self) -> None:
        """This worker is leaving: what it counted is written, its gauges stop
        counting (live* modes)."""
        self._flush()
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), str(self.multiprocess_dir))


def _forget_dead_workers(directory: Path) -> None:
    """Drop the gauges of workers that ended without close() (killed): uvicorn
    restarts a dead worker but tells no one, so look for its process."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(directory))
        except PermissionError:   # alive, under another user: pid reused
            continue

