"""Per-tenant limits of parallel runs.

A tenant is a credential fingerprint (:func:`ctxwarden.cache.credential_fingerprint`
of the run's headers; callers that send no credential are one tenant). A
tenant may have at most :data:`MAX_RUNS_PER_TENANT` runs at once; one more is
refused with :class:`TooManyRuns` (429 in the dialect's error shape,
``Retry-After:`` :data:`RETRY_AFTER_SECONDS`) before anything is sent. Over all
its runs, a tenant has at most ``max_workers`` tasks in flight; further tasks
wait for one of them (the wait counts in their ``task_timeout``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import anyio

from ..errors import TooManyRequests
from .gate import UpstreamGate

#: runs one tenant (credential fingerprint) may have at once; one more is a 429
MAX_RUNS_PER_TENANT = 4
#: the Retry-After of that 429, in seconds
RETRY_AFTER_SECONDS = 5


class TooManyRuns(TooManyRequests):
    """The tenant already has MAX_RUNS_PER_TENANT runs going (-> 429 + Retry-After)."""

    headers = (("retry-after", str(RETRY_AFTER_SECONDS)),)


class Tenant:
    """One tenant's runs going, and the limiter its tasks in flight share."""

    __slots__ = ("runs", "tasks")

    def __init__(self, max_in_flight: int) -> None:
        self.runs = 0
        self.tasks = anyio.CapacityLimiter(max_in_flight)


class TenantLimits:
    """Runs and tasks in flight per tenant, for one proxy (one upstream gate,
    one event loop). An entry lives while the tenant has a run going."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}

    def runs(self, tenant: str) -> int:
        t = self._tenants.get(tenant)
        return t.runs if t is not None else 0

    def __len__(self) -> int:
        return len(self._tenants)

    @contextlib.contextmanager
    def run(self, tenant: str, max_in_flight: int) -> Iterator[Tenant]:
        """Hold one of the tenant's run slots for the block; raise TooManyRuns
        when it has MAX_RUNS_PER_TENANT already."""
        entry = self._tenants.get(tenant)
        if entry is None:
            entry = self._tenants[tenant] = Tenant(max_in_flight)
        if entry.runs >= MAX_RUNS_PER_TENANT:
            raise TooManyRuns(
                f"too many parallel runs at once for this credential: at most {MAX_RUNS_PER_TENANT} may run at the "
                f"same time; retry after {RETRY_AFTER_SECONDS} s")
        entry.runs += 1
        try:
            yield entry
        finally:
            entry.runs -= 1
            if entry.runs == 0 and self._tenants.get(tenant) is entry:
                del self._tenants[tenant]


# one TenantLimits per proxy: the gate is per proxy (and per event loop)
_LIMITS: weakref.WeakKeyDictionary[UpstreamGate, TenantLimits] = weakref.WeakKeyDictionary()


def tenant_limits(gate: UpstreamGate) -> TenantLimits:
    """The per-tenant limits that go with ``gate`` (created on first use)."""
    limits = _LIMITS.get(gate)
    if limits is None:
        limits = _LIMITS[gate] = TenantLimits()
    return limits
