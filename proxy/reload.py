"""Hot reload: re-read the config file on SIGHUP and when it changes on disk.

Changes are seen from the operating system's file events (watchfiles, on
inotify), within a fraction of a second; a stat of the file every
``reload_interval`` seconds also catches them where no events arrive
(network filesystems, some container bind mounts), which watchfiles can
only cover by polling chosen in advance.

A valid file takes effect for new requests, except the settings read only at
start (:data:`START_ONLY`), which keep their running values until a restart;
a bad one is refused with file, line and reason in the log and on
/_ctxwarden/health, and the last good config stays in force."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
from watchfiles import awatch

from .config import Config, ConfigError, load_config
from .observability.metrics import Metrics

log = logging.getLogger("ctxwarden.reload")

WATCH_DEBOUNCE_MS = 200   # changes this close together (a write, then a rename) are one
WATCH_STEP_MS = 50


# Settings the process reads once, when it starts: the listen socket and the
# worker processes (uvicorn's), the reload poll and the shutdown grace, the
# upstream connection pool, and the cache backend with its bounds.  The rest
# of a reloaded file applies to the next request.
START_ONLY: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "workers", "grace_period", "reload_interval", "max_connections",
               "max_keepalive_connections", "trust_env"),
    "cache": ("backend", "ttl", "max_entries", "max_bytes", "redis_url", "redis_url_env", "key_prefix",
              "redis_timeout", "coalesce_wait"),
}


def in_effect(started: Config, loaded: Config) -> tuple[Config, tuple[str, ...]]:
    """``loaded`` as a reload applies it (its start-only settings keep the
    values the process started with), and the start-only settings it changes
    (``"server.port"``, ...): they take effect on restart."""
    sections, pending = {}, []
    for section, names in START_ONLY.items():
        running, wanted = getattr(started, section), getattr(loaded, section)
        pending += [f"{section}.{name}" for name in names if getattr(running, name) != getattr(wanted, name)]
        sections[section] = dataclasses.replace(wanted, **{name: getattr(running, name) for name in names})
    return dataclasses.replace(loaded, **sections), tuple(pending)


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows links: a Kubernetes ConfigMap swaps a symlink
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigReloader:
    def __init__(self, path: str, apply: Callable[[Config], None], metrics: Metrics, interval: float,
                 last_good_path: str | None = None):
        self.path = path
        self.last_good_path = last_good_path
        self.apply = apply
        self.metrics = metrics
        self.interval = interval
        self.last_error: str | None = None
        self._seen = _fingerprint(path)
        self._wake = anyio.Event()
        self._stop = anyio.Event()

    def reload(self) -> bool:
        """Load and apply the file now; False (and the old config kept) if it is bad."""
        self._seen = _fingerprint(self.path)
        try:
            config = load_config(self.path)
            self.apply(config)
        except ConfigError as exc:
            self.last_error = str(exc)
            self.metrics.config_reloads.labels("refused").inc()
            self.metrics.config_last_reload_ok.set(0)
            log.error("config reload refused, keeping the last good config: %s", exc)
            return False
        self.last_error = None
        if self.last_good_path is not None:
            keep_last_good(self.path, self.last_good_path)
        self.metrics.config_reloads.labels("applied").inc()
        self.metrics.config_last_reload_ok.set(1)
        log.info("config reloaded from %s", self.path)
        return True

    def request_reload(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            import asyncio
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, ValueError):
            log.info("SIGHUP reload unavailable here; watching %s for changes only", self.path)
        async with anyio.create_task_group() as tasks:
            if self.interval > 0:
                tasks.start_soon(self._watch)
            try:
                while True:
                    with anyio.move_on_after(self.interval if self.interval > 0 else None):
                        await self._wake.wait()
                    woken = self._wake.is_set()
                    self._wake = anyio.Event()
                    if woken or _fingerprint(self.path) != self._seen:
                        self.reload()
            finally:
                # the watcher's thread checks this every WATCH_STEP_MS: shutdown is not held up
                self._stop.set()

    async def _watch(self) -> None:
        """Wake the loop when the file changes.  The folder is watched, not
        the file: a Kubernetes ConfigMap swaps a symlink beside it and editors
        rename a new file over the old, both of which a watch on the file
        itself would lose."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            async for _ in awatch(folder, watch_filter=None, recursive=False, debounce=WATCH_DEBOUNCE_MS,
                                  step=WATCH_STEP_MS, stop_event=self._stop):
                if _fingerprint(self.path) != self._seen:
                    self._wake.set()
        except OSError as exc:
            log.warning("cannot watch %s for changes (%s); checking it every %g s", folder, exc, self.interval)


def keep_last_good(path: str, last_good_path: str) -> None:
    """Copy a config that loaded to where restarted workers fall back to."""
    try:
        data = Path(path).read_bytes()
        temporary = f"{last_good_path}.{os.getpid()}"
        Path(temporary).write_bytes(data)
        os.replace(temporary, last_good_path)
    except OSError as exc:
        log.warning("could not keep a copy of the last good config: %s", exc.strerror)
