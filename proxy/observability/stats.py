"""Live figures for the dashboard: totals, a per-second series over the last
few minutes, recent latencies and the last rewrites. In memory, per process;
with several workers, each publishes its state() and the stats endpoint reads
them merged() (shared.py).

Merged, the totals, the series and the recent rewrites are what one process
seeing every request would show. The latency quantiles are not: they are taken
over each worker's last LATENCY_WINDOW requests together, which weighs a busy
worker's recent past like a quiet worker's older one."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from typing import Any

from .record import RequestRecord

SERIES_SECONDS = 300
LATENCY_WINDOW = 2000
RECENT_REWRITES = 50
RATE_WINDOW_SECONDS = 10
_TOTALS = ("requests", "upstream_errors", "tokens_before", "tokens_after", "cost_sent", "cost_passthrough",
           "cache_hits", "cache_misses")


@dataclass
class _Second:
    t: int
    requests: int = 0
    errors: int = 0
    tokens_before: int = 0
    tokens_after: int = 0


class LiveStats:
    """Fed every finished request's record; read by /_ctxwarden/stats."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.upstream_errors = 0
        self.tokens_before = 0
        self.tokens_after = 0
        self.cost_sent = 0.0
        self.cost_passthrough = 0.0
        self.cache_hits = 0
        self.cache_misses = 0
        self._seconds: deque[_Second] = deque(maxlen=SERIES_SECONDS)
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._rewrites: deque[dict[str, object]] = deque(maxlen=RECENT_REWRITES)

    def _second(self, now: float) -> _Second:
        t = int(now)
        if not self._seconds or self._seconds[-1].t != t:
            self._seconds.append(_Second(t))
        return self._seconds[-1]

    def observe(self, record: RequestRecord) -> None:
        now = time.time()
        second = self._second(now)
        second.requests += 1
        self.requests += 1
        self._latencies.append(record.total_seconds)
        if record.error_kind or record.status >= 500:
            second.errors += 1
            self.upstream_errors += 1
        if record.cache == "hit":
            self.cache_hits += 1
        elif record.cache == "miss":
            self.cache_misses += 1
        if record.tokens_before is not None and record.tokens_after is not None:
            second.tokens_before += record.tokens_before
            second.tokens_after += record.tokens_after
            self.tokens_before += record.tokens_before
            self.tokens_after += record.tokens_after
            if record.cost_sent is not None and record.cost_passthrough is not None:
                self.cost_sent += record.cost_sent
                self.cost_passthrough += record.cost_passthrough
            self._rewrites.append({
                "time": round(now, 3), "dialect": record.dialect, "decision": record.rewrite,
                "reason": record.rewrite_reason, "tokens_before": record.tokens_before,
                "tokens_after": record.tokens_after, "cost_sent": record.cost_sent,
                "cost_passthrough": record.cost_passthrough, "status": record.status,
            })

    def state(self) -> dict[str, Any]:
        """Everything snapshot() is computed from, as JSON-able data."""
        return {"started": self.started, **{name: getattr(self, name) for name in _TOTALS},
                "seconds": [astuple(s) for s in self._seconds], "latencies": list(self._latencies),
                "rewrites": list(self._rewrites)}

    @classmethod
    def merged(cls, states: Iterable[dict[str, Any]]) -> LiveStats:
        """One LiveStats holding several processes' state(): totals and each
        second's figures summed, the newest rewrites, every latency window."""
        merged = cls()
        merged._latencies = deque()   # unbounded: the union of the windows
        seconds: dict[int, _Second] = {}
        rewrites: list[dict[str, object]] = []
        for state in states:
            merged.started = min(merged.started, state["started"])
            for name in _TOTALS:
                setattr(merged, name, getattr(merged, name) + state[name])
            for t, *figures in state["seconds"]:
                second = seconds.setdefault(t, _Second(t))
                for name, value in zip(("requests", "errors", "tokens_before", "tokens_after"), figures):
                    setattr(second, name, getattr(second, name) + value)
            merged._latencies.extend(state["latencies"])
            rewrites.extend(state["rewrites"])
        # Each process keeps its newest seconds and rewrites, so the newest of
        # them all are complete.
        merged._seconds.extend(seconds[t] for t in sorted(seconds))
        merged._rewrites.extend(sorted(rewrites, key=lambda rewrite: rewrite["time"]))
        return merged

    def snapshot(self) -> dict[str, object]:
        now = time.time()
        latencies = sorted(self._latencies)
        recent = [s for s in self._seconds if s.t > now - RATE_WINDOW_SECONDS - 1 and s.t < int(now)]
        cached = self.cache_hits + self.cache_misses
        return {
            "uptime_seconds": round(now - self.started, 1),
            "requests": self.requests,
            "requests_per_second": round(sum(s.requests for s in recent) / RATE_WINDOW_SECONDS, 2),
            "latency_ms": {"p50": _quantile_ms(latencies, 0.5), "p99": _quantile_ms(latencies, 0.99)},
            "upstream_errors": self.upstream_errors,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "tokens_saved": self.tokens_before - self.tokens_after,
            "reduction_ratio": round(1 - self.tokens_after / self.tokens_before, 4) if self.tokens_before else 0.0,
            "cost_sent": round(self.cost_sent, 1),
            "cost_passthrough": round(self.cost_passthrough, 1),
            "bill_saved_ratio": (round(1 - self.cost_sent / self.cost_passthrough, 4)
                                 if self.cost_passthrough else 0.0),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_rate": round(self.cache_hits / cached, 4) if cached else 0.0,
            "series": [{"t": s.t, "requests": s.requests, "errors": s.errors,
                        "tokens_saved": s.tokens_before - s.tokens_after,
                        "reduction_ratio": round(1 - s.tokens_after / s.tokens_before, 4) if s.tokens_before else None}
                       for s in self._seconds],
            "recent_rewrites": list(reversed(self._rewrites)),
        }


def _quantile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)
