"""The config file is reloaded from file events, not only from the periodic
check: with the check an hour apart, a change (written in place, renamed over
the file, or a ConfigMap-style symlink swap) is applied, and the watcher stops
with the reloader."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from ctxwarden.observability.metrics import Metrics
from ctxwarden.reload import ConfigReloader
from tests.servers import proxy_config_xml

HOUR = 3600.0


def config_xml(budget: int) -> str:
    return proxy_config_xml("http://127.0.0.1:9").replace("<budget>200000</budget>", f"<budget>{budget}</budget>")


async def reload_after(path: Path, change) -> list[int]:
    """The budgets applied once ``change()`` has run, with the periodic check an hour apart."""
    applied: list[int] = []
    reloader = ConfigReloader(str(path), lambda config: applied.append(config.token_management.budget),
                              Metrics(), HOUR)
    with anyio.fail_after(20):   # a bound on a hang, not a timing check
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reloader.run)
            await anyio.sleep(0.5)   # the watch is set up on a worker thread
            change()
            while not applied:
                await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
    return applied


def rename_over(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def configmap_swap(folder: Path, text: str) -> None:
    """What the kubelet does: a new timestamped folder, then `..data` re-pointed at it."""
    new = folder / "..2026_11_30_12_00_00.2"
    new.mkdir()
    (new / "performance.xml").write_text(text)
    os.symlink(new.name, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")


@pytest.mark.parametrize("how", ["in place", "renamed over", "configmap"])
async def test_a_change_is_applied_from_file_events(tmp_path, how):
    path = tmp_path / "performance.xml"
    if how == "configmap":
        old = tmp_path / "..2026_11_30_11_00_00.1"
        old.mkdir()
        (old / "performance.xml").write_text(config_xml(10000))
        os.symlink(old.name, tmp_path / "..data")
        os.symlink("..data/performance.xml", path)
        change = lambda: configmap_swap(tmp_path, config_xml(12345))   # noqa: E731
    else:
        path.write_text(config_xml(10000))
        change = {"in place": lambda: path.write_text(config_xml(12345)),
                  "renamed over": lambda: rename_over(path, config_xml(12345))}[how]
    assert await reload_after(path, change) == [12345]
