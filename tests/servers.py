"""Run ASGI apps and the `ctxwarden` CLI on loopback for tests.

    with serve_app(app) as url:          # uvicorn in a background thread
        httpx.get(url + "/v1/models")

    with cli_server(config_path) as url:  # `ctxwarden serve` as a subprocess
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import uvicorn

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent

# The seed block from DESIGN.md, exactly as written.
SEED_CONFIG = """<performance_optimization>
  <token_management>
    <budget>200000</budget>
    <compression_threshold>0.7</compression_threshold>
    <pruning_distance>3</pruning_distance>
  </token_management>
  <parallel_execution>
    <max_workers>4</max_workers>
    <task_timeout>300</task_timeout>
    <resource_limit>0.8</resource_limit>
  </parallel_execution>
</performance_optimization>
"""


def free_port() -> int:
    """A port that was free a moment ago (small race; use bound sockets where possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()


def wait_for_port(port: int, host: str = HOST, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # older uvicorn; newer skips off the main thread
        pass


@contextlib.contextmanager
def serve_app(
    app,
    *,
    host: str = HOST,
    port: int = 0,
    lifespan: str = "on",
    log_level: str = "warning",
    loop: str = "auto",
    http: str = "httptools",
    startup_timeout: float = 10.0,
    **config_kwargs,
) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a daemon thread; yield its base URL.

    The listening socket is bound before the thread starts (port=0 picks a
    free one), so there is no race for the port. Blocks until the server has
    started (lifespan startup done) and shuts it down cleanly on exit.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level=log_level,
        access_log=False,
        loop=loop,
        http=http,
        ws="none",
        timeout_graceful_shutdown=2,
        **config_kwargs,
    )
    server = _ThreadServer(config)
    error: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # pragma: no cover - surfaced below
            error.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"uvicorn failed to start: {error[0] if error else 'lifespan startup failed'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("uvicorn did not start in time")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():  # pragma: no cover
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()


def ctxwarden_command() -> list[str]:
    """How to invoke the CLI: the installed console script if present, else `python -m ctxwarden`."""
    exe = Path(sys.executable).with_name("ctxwarden")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ctxwarden")
    if found:
        return [found]
    return [sys.executable, "-m", "ctxwarden"]


def run_cli(args: Sequence[str], timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ctxwarden_command() + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def cli_server(
    config_path: str | os.PathLike,
    *,
    host: str = HOST,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: dict | None = None,
    startup_timeout: float = 20.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `ctxwarden serve --config FILE --host H --port P`; yield (base URL, process).

    The server's output goes to a temporary file, not a pipe: a pipe nobody
    reads fills up and blocks the server once it has logged ~64 KiB.
    """
    port = port or free_port()
    cmd = ctxwarden_command() + ["serve", "--config", str(config_path), "--host", host, "--port", str(port)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd + list(extra_args),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        try:
            wait_for_port(port, host, timeout=startup_timeout, proc=proc)
        except Exception:
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError(f"`{' '.join(cmd)}` did not start:\n{output()}")
        proc.output = output  # type: ignore[attr-defined]  # for tests that check the log
        yield f"http://{host}:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait(timeout=5)
        log.close()


def proxy_config_xml(
    openai_url: str,
    anthropic_url: str | None = None,
    local_url: str | None = None,
    *,
    port: int = 8788,
    max_body_bytes: int = 33554432,
    connect_timeout: float = 5,
    read_timeout: float = 60,
    local_patterns: Sequence[str] = ("llama-*",),
    api_key_env: str | None = None,
) -> str:
    """The proxy config used by the tests and the benchmark (the seed block + upstreams)."""
    anthropic_url = anthropic_url or openai_url
    key = f' api_key_env="{api_key_env}"' if api_key_env else ""
    local = ""
    if local_url:
        models = "".join(f"<model>{p}</model>" for p in local_patterns)
        local = (
            f'    <upstream name="local" dialect="openai" base_url="{local_url}" '
            f'connect_timeout="{connect_timeout}" read_timeout="{read_timeout}">{models}</upstream>\n'
        )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<performance_optimization>
  <token_management><budget>200000</budget><compression_threshold>0.7</compression_threshold><pruning_distance>3</pruning_distance></token_management>
  <parallel_execution><max_workers>4</max_workers><task_timeout>300</task_timeout><resource_limit>0.8</resource_limit></parallel_execution>
  <server host="127.0.0.1" port="{port}" max_body_bytes="{max_body_bytes}"/>
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{openai_url}"{key} connect_timeout="{connect_timeout}" read_timeout="{read_timeout}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{anthropic_url}"{key} connect_timeout="{connect_timeout}" read_timeout="{read_timeout}"/>
{local}  </upstreams>
</performance_optimization>
"""
