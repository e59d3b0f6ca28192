"""How many worker processes `serve` starts when `server/@workers` is `auto`
(and `Listening`: what it then runs with, for /_ctxwarden/config to show).

With the memory cache backend, one. Each worker would keep its own cache,
in-flight coalescing and conversation state, so a second one halves the
cache's hits and coalescing while one worker serves thousands of small
requests a second, far more than a sidecar sees. It also costs CPU where the
proxy shares the machine with its callers: on 2 cores shared with the load and
the upstream, two workers spent 260-273 µs per request against one's 200-207,
and served no more (`python bench/overhead.py --via-cli --no-litellm
--server-attrs 'workers="2"'`, then `"1"`; README, Proxy overhead).

With Redis, which the workers share, the number of CPUs this process may
actually use: the CPUs it may run on (affinity, e.g. `taskset` or a cpuset),
lowered by a cgroup v2 CPU quota (`cpu.max`, what a container's CPU limit
sets), rounded up so a limit of 1.5 CPUs can be used in full. A sidecar
limited to 1 CPU gets 1 worker: a second process could only take turns with
the first and would cost its memory for nothing.

At most MAX_AUTO_WORKERS: every worker holds its own upstream connection pool
(`max_connections` each), tokenizer tables and memory, so workers multiply
memory and upstream connections; eight serve far more than a sidecar sees.
An explicit number is not capped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class Listening:
    """Where `serve` listens and with how many workers: its command line may
    set these apart from the file's <server> (shown by /_ctxwarden/config)."""

    host: str
    port: int
    workers: int
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def auto_workers(shared_backend: bool) -> int:
    """`shared_backend`: the cache backend is one all workers share (Redis)."""
    if not shared_backend:
        return 1
    cpus = usable_cpus()
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, min(cpus, MAX_AUTO_WORKERS))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux: no affinity call
        return os.cpu_count() or 1


def cgroup_cpu_limit() -> float | None:
    """CPUs the cgroup v2 quota allows this process: the tightest `cpu.max` of
    its cgroup and its ancestors (a container's limit may sit on a parent);
    None without a quota. cgroup v1 is not read: there, affinity decides."""
    limits = [limit for directory in _own_cgroup_and_ancestors()
              if (limit := _cpu_max(directory / "cpu.max")) is not None]
    return min(limits) if limits else None


def _own_cgroup_and_ancestors() -> list[Path]:
    # cgroup v2 lists one line "0::/path"; inside a container with its own
    # cgroup namespace the path is "/" and CGROUP_ROOT is the container's.
    try:
        lines = SELF_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    directory = CGROUP_ROOT / own.strip("/")
    return [directory, *(p for p in directory.parents if p.is_relative_to(CGROUP_ROOT))]


def _cpu_max(path: Path) -> float | None:
    """`cpu.max` holds "QUOTA PERIOD" in microseconds, or "max PERIOD" for no quota."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None
