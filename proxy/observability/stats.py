"""Live figures for the dashboard: totals, the same figures per model and per
upstream, a per-second series over the last few minutes, recent latencies and
the last rewrites. In memory, per process; with several workers, each
publishes its state() and the stats endpoint reads them merged() (shared.py).

Merged, the totals, the per-upstream figures, the series and the recent
rewrites are what one process seeing every request would show. The latency
quantiles are not: they are taken over each worker's last LATENCY_WINDOW
requests together, which weighs a busy worker's recent past like a quiet
worker's older one. Nor, once more than MODELS_TRACKED models were seen, is
the split between named models and "other" (see _Models).

"Upstream errors" count exactly what the metric ctxwarden_upstream_errors_total
counts: requests whose record has an error kind (the upstream could not be
reached, timed out or broke its stream); an error status the upstream
answered is relayed, and is not one. "Retries" and "fallbacks" count what
ctxwarden_upstream_retries_total and ctxwarden_upstream_fallbacks_total
count: calls repeated after a failed one, and requests handed from a failed
upstream to its next fallback; by upstream, on the row of the upstream that
failed, which need not be the one that answered."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from typing import Any

from .record import RequestRecord

SERIES_SECONDS = 300
LATENCY_WINDOW = 2000
RECENT_REWRITES = 50
RATE_WINDOW_SECONDS = 10
# Model names come from clients: at most this many are kept by name, the rest
# add up in "other", and a name is cut to MODEL_NAME_CHARS characters.
MODELS_TRACKED = 20
MODEL_NAME_CHARS = 80
# The decisions that send upstream something else than the request received.
REWRITTEN = frozenset({"append", "compact"})
CACHE_OUTCOMES = ("hit", "miss", "bypass")


@dataclass
class Tally:
    """The figures the dashboard shows for all requests, for one model and for one upstream."""

    requests: int = 0
    upstream_errors: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    # input cost (input-token units, the prompt cache priced in) of the priced chat requests
    cost_sent: float = 0.0
    cost_passthrough: float = 0.0
    retries: int = 0
    fallbacks: int = 0

    def add(self, record: RequestRecord) -> None:
        """The record's figures; its retries and fallbacks are the caller's to place."""
        self.requests += 1
        self.upstream_errors += bool(record.error_kind)
        if record.tokens_before is not None and record.tokens_after is not None:
            self.tokens_before += record.tokens_before
            self.tokens_after += record.tokens_after
            if record.cost_sent is not None and record.cost_passthrough is not None:
                self.cost_sent += record.cost_sent
                self.cost_passthrough += record.cost_passthrough

    def merge(self, figures: Iterable[int | float]) -> Tally:
        """This tally plus another's astuple() (as state() keeps it)."""
        for f, value in zip(fields(self), figures, strict=True):
            setattr(self, f.name, getattr(self, f.name) + value)
        return self

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "upstream_errors": self.upstream_errors,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "tokens_saved": self.tokens_before - self.tokens_after,
            "reduction_ratio": round(1 - self.tokens_after / self.tokens_before, 4) if self.tokens_before else 0.0,
            "cost_sent": round(self.cost_sent, 1),
            "cost_passthrough": round(self.cost_passthrough, 1),
            "bill_saved_ratio": (round(1 - self.cost_sent / self.cost_passthrough, 4)
                                 if self.cost_passthrough else 0.0),
            "retries": self.retries,
            "fallbacks": self.fallbacks,
        }


@dataclass
class _Models:
    """Per-model tallies, at most MODELS_TRACKED by name. A new name when the
    table is full takes the place of the model with the fewest requests, whose
    figures move to `other`: a client inventing names churns one slot while
    the models that carry the traffic keep theirs. A model pushed out and seen
    again starts from zero (its earlier figures stay in `other`)."""

    named: dict[str, Tally]
    other: Tally

    def tally(self, model: str) -> Tally:
        name = model[:MODEL_NAME_CHARS]
        tally = self.named.get(name)
        if tally is None:
            if len(self.named) >= MODELS_TRACKED:
                smallest = min(self.named, key=lambda n: self.named[n].requests)
                self.other.merge(astuple(self.named.pop(smallest)))
            tally = self.named[name] = Tally()
        return tally

    @classmethod
    def bounded(cls, named: dict[str, Tally], other: Tally) -> _Models:
        """The MODELS_TRACKED busiest of `named`; the rest folded into `other`."""
        ranked = sorted(named.items(), key=lambda item: (-item[1].requests, item[0]))
        for _, tally in ranked[MODELS_TRACKED:]:
            other.merge(astuple(tally))
        return cls(dict(ranked[:MODELS_TRACKED]), other)


@dataclass
class _Second:
    t: int
    requests: int = 0
    errors: int = 0     # upstream errors
    tokens_before: int = 0
    tokens_after: int = 0


class LiveStats:
    """Fed every finished request's record; read by /_ctxwarden/stats."""

    def __init__(self) -> None:
        self.started = time.time()
        self.total = Tally()
        self.cache = dict.fromkeys(CACHE_OUTCOMES, 0)    # chat requests by cache outcome
        self.error_kinds: dict[str, int] = {}
        self.models = _Models({}, Tally())              # chat requests
        self.upstreams: dict[str, Tally] = {}           # "": answered without calling one
        self._seconds: deque[_Second] = deque(maxlen=SERIES_SECONDS)
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._rewrites: deque[dict[str, object]] = deque(maxlen=RECENT_REWRITES)

    @property
    def requests(self) -> int:
        return self.total.requests

    def _second(self, now: float) -> _Second:
        t = int(now)
        if not self._seconds or self._seconds[-1].t != t:
            self._seconds.append(_Second(t))
        return self._seconds[-1]

    def observe(self, record: RequestRecord) -> None:
        now = time.time()
        second = self._second(now)
        second.requests += 1
        self._latencies.append(record.total_seconds)
        self.upstreams.setdefault(record.upstream, Tally()).add(record)
        for upstream, _ in record.retries:
            self.upstreams.setdefault(upstream, Tally()).retries += 1
        for failed, _ in record.fallbacks:
            self.upstreams.setdefault(failed, Tally()).fallbacks += 1
        tallies = [self.total, self.models.tally(record.model)] if record.model else [self.total]
        for tally in tallies:
            tally.add(record)
            tally.retries += len(record.retries)
            tally.fallbacks += len(record.fallbacks)
        if record.error_kind:
            second.errors += 1
            self.error_kinds[record.error_kind] = self.error_kinds.get(record.error_kind, 0) + 1
        if record.tokens_before is None or record.tokens_after is None:
            return
        # Counted and past the rewrite: a chat request that reached the cache's decision.
        self.cache[record.cache] += 1
        second.tokens_before += record.tokens_before
        second.tokens_after += record.tokens_after
        if record.rewrite in REWRITTEN:
            self._rewrites.append({
                "time": round(now, 3), "dialect": record.dialect, "model": record.model[:MODEL_NAME_CHARS],
                "upstream": record.upstream, "decision": record.rewrite, "reason": record.rewrite_reason,
                "tokens_before": record.tokens_before, "tokens_after": record.tokens_after,
                "cost_sent": record.cost_sent, "cost_passthrough": record.cost_passthrough,
                "cache": record.cache, "status": record.status,
            })

    def state(self) -> dict[str, Any]:
        """Everything snapshot() is computed from, as JSON-able data."""
        return {"started": self.started, "total": astuple(self.total), "cache": self.cache,
                "error_kinds": self.error_kinds,
                "models": {name: astuple(t) for name, t in self.models.named.items()},
                "other_models": astuple(self.models.other),
                "upstreams": {name: astuple(t) for name, t in self.upstreams.items()},
                "seconds": [astuple(s) for s in self._seconds], "latencies": list(self._latencies),
                "rewrites": list(self._rewrites)}

    @classmethod
    def merged(cls, states: Iterable[dict[str, Any]]) -> LiveStats:
        """One LiveStats holding several processes' state(): totals, each
        model's, upstream's and second's figures summed, the newest rewrites,
        every latency window."""
        merged = cls()
        merged._latencies = deque()   # unbounded: the union of the windows
        seconds: dict[int, _Second] = {}
        models: dict[str, Tally] = {}
        other_models = Tally()
        rewrites: list[dict[str, object]] = []
        for state in states:
            merged.started = min(merged.started, state["started"])
            merged.total.merge(state["total"])
            for outcome, count in state["cache"].items():
                merged.cache[outcome] += count
            for kind, count in state["error_kinds"].items():
                merged.error_kinds[kind] = merged.error_kinds.get(kind, 0) + count
            for name, figures in state["models"].items():
                models.setdefault(name, Tally()).merge(figures)
            other_models.merge(state["other_models"])
            for name, figures in state["upstreams"].items():
                merged.upstreams.setdefault(name, Tally()).merge(figures)
            for t, *figures in state["seconds"]:
                second = seconds.setdefault(t, _Second(t))
                for name, value in zip(("requests", "errors", "tokens_before", "tokens_after"), figures):
                    setattr(second, name, getattr(second, name) + value)
            merged._latencies.extend(state["latencies"])
            rewrites.extend(state["rewrites"])
        merged.models = _Models.bounded(models, other_models)
        # Each process keeps its newest seconds and rewrites, so the newest of
        # them all are complete.
        merged._seconds.extend(seconds[t] for t in sorted(seconds))
        merged._rewrites.extend(sorted(rewrites, key=lambda rewrite: rewrite["time"]))
        return merged

    def snapshot(self) -> dict[str, object]:
        now = time.time()
        latencies = sorted(self._latencies)
        recent = [s for s in self._seconds if s.t > now - RATE_WINDOW_SECONDS - 1 and s.t < int(now)]
        hits, misses, bypassed = (self.cache[outcome] for outcome in CACHE_OUTCOMES)
        cacheable = hits + misses
        return {
            "uptime_seconds": round(now - self.started, 1),
            **self.total.snapshot(),
            "requests_per_second": round(sum(s.requests for s in recent) / RATE_WINDOW_SECONDS, 2),
            "latency_ms": {"p50": _quantile_ms(latencies, 0.5), "p99": _quantile_ms(latencies, 0.99)},
            "upstream_errors_by_kind": dict(sorted(self.error_kinds.items())),
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_bypassed": bypassed,
            "cache_hit_rate": round(hits / cacheable, 4) if cacheable else 0.0,
            "cache_bypass_ratio": round(bypassed / (cacheable + bypassed), 4) if cacheable + bypassed else 0.0,
            "by_model": _rows(self.models.named) + (
                [{"name": None, **self.models.other.snapshot()}] if self.models.other.requests else []),
            "by_upstream": _rows(self.upstreams),
            "series": [{"t": s.t, "requests": s.requests, "errors": s.errors,
                        "tokens_saved": s.tokens_before - s.tokens_after,
                        "reduction_ratio": round(1 - s.tokens_after / s.tokens_before, 4) if s.tokens_before else None}
                       for s in self._seconds],
            "recent_rewrites": list(reversed(self._rewrites)),
        }


def _rows(tallies: dict[str, Tally]) -> list[dict[str, Any]]:
    """Busiest first, then by name; the requests no upstream answered ("") last."""
    ranked = sorted(tallies.items(), key=lambda item: (item[0] == "", -item[1].requests, item[0]))
    return [{"name": name, **tally.snapshot()} for name, tally in ranked]


def _quantile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)
