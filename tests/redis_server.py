"""A real redis-server for tests, on a free loopback port.

    with RedisServer() as server:      # starts `redis-server` as a subprocess
        server.url                     # redis://127.0.0.1:<port>/0
        server.stop(); server.start()  # an outage and a restart on the same port

Fixtures (import them into a test module: ``from tests.redis_server import redis_url``):

    redis_server   session-scoped RedisServer (skips when redis-server is not installed)
    redis_url      the URL to use: $CTXWARDEN_TEST_REDIS_URL when set (a Redis that
                   is already running, e.g. started by .ci/run), else redis_server.url
    own_redis      a function-scoped RedisServer of its own, for tests that stop it

The server runs with no persistence (``--save '' --appendonly no``) in a
temporary directory, bound to 127.0.0.1 only. No mock ever stands in for Redis:
without the binary the tests skip with the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Iterator

import pytest

REDIS_URL_ENV = "CTXWARDEN_TEST_REDIS_URL"
SKIP_REASON = (
    "redis-server is not installed (Debian: apt-get install -y redis-server); "
    f"or set {REDIS_URL_ENV} to a running Redis"
)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a Redis answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_started: "set[RedisServer]" = set()


@atexit.register
def _stop_all() -> None:  # a killed test run must not leave servers behind
    for server in list(_started):
        server.stop(timeout=1.0)


class RedisServer:
    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise RuntimeError(SKIP_REASON)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="ctxwarden-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "RedisServer":
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--daemonize", "no",
                "--protected-mode", "no",
                "--loglevel", "warning",
                "--logfile", "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}: {err.strip()}")
            if ping(self.host, self.port):
                _started.add(self)
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        _started.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()
        # the port is free again once nothing accepts on it
        deadline = time.monotonic() + timeout
        while ping(self.host, self.port, 0.05) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _need_binary() -> None:
    if redis_server_binary() is None:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    _need_binary()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        return url
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    _need_binary()
    with RedisServer() as server:
        yield server
