"""`server/@workers="auto"`: one with the memory cache; with Redis, the CPUs
this process may use, at most MAX_AUTO_WORKERS."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxwarden import workers
from ctxwarden.workers import MAX_AUTO_WORKERS, auto_workers


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake machine: set(cpus=..., cpu_max=..., parent_cpu_max=...) with this process in /app/sidecar."""
    root = tmp_path / "cgroup"
    own = root / "app" / "sidecar"
    own.mkdir(parents=True)
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("0::/app/sidecar\n")
    monkeypatch.setattr(workers, "CGROUP_ROOT", root)
    monkeypatch.setattr(workers, "SELF_CGROUP", self_cgroup)

    def set_(cpus: int, cpu_max: str | None = None, parent_cpu_max: str | None = None) -> None:
        monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(cpus)))
        for directory, text in ((own, cpu_max), (own.parent, parent_cpu_max)):
            if text is not None:
                (directory / "cpu.max").write_text(text + "\n")
    return set_


def test_with_the_memory_cache_one_worker_whatever_the_cpus(machine):
    # each worker would keep a cache, coalescing and conversation state of its own
    machine(cpus=16, cpu_max="max 100000")
    assert auto_workers(shared_backend=False) == 1


def test_without_a_quota_one_worker_per_usable_cpu(machine):
    machine(cpus=3, cpu_max="max 100000")
    assert auto_workers(shared_backend=True) == 3


def test_a_sidecar_limited_to_one_cpu_gets_one_worker(machine):
    machine(cpus=16, cpu_max="100000 100000")
    assert auto_workers(shared_backend=True) == 1


def test_a_fractional_quota_is_rounded_up_and_never_below_one(machine):
    machine(cpus=16, cpu_max="150000 100000")
    assert auto_workers(shared_backend=True) == 2
    machine(cpus=16, cpu_max="20000 100000")
    assert auto_workers(shared_backend=True) == 1


def test_the_tightest_quota_of_the_ancestors_applies(machine):
    machine(cpus=16, cpu_max="max 100000", parent_cpu_max="300000 100000")
    assert auto_workers(shared_backend=True) == 3


def test_affinity_below_the_quota_wins(machine):
    machine(cpus=2, cpu_max="400000 100000")
    assert auto_workers(shared_backend=True) == 2


def test_many_cpus_are_capped(machine):
    machine(cpus=64)
    assert auto_workers(shared_backend=True) == MAX_AUTO_WORKERS


def test_an_unreadable_cgroup_falls_back_to_affinity(machine, monkeypatch, tmp_path):
    machine(cpus=4, cpu_max="garbage")
    assert auto_workers(shared_backend=True) == 4
    monkeypatch.setattr(workers, "SELF_CGROUP", tmp_path / "absent")   # no cgroup v2: the root is read
    assert auto_workers(shared_backend=True) == 4
