"""The `ctxwarden` command: serve, validate, explain, run-parallel."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal, TypeVar

from .config import Config, ConfigError, load_config
from .dialects import DEFAULT, DIALECTS
from .errors import ProxyError
from .heap import fix_mmap_threshold
from .observability.logs import configure_logging
from .workers import auto_workers

T = TypeVar("T")
log = logging.getLogger("ctxwarden")


def _serve(args: argparse.Namespace) -> int:
    import tempfile

    import uvicorn

    from .app import CONFIG_ENV, LAST_GOOD_ENV, LISTEN_HOST_ENV, LOG_LEVEL_ENV, create_app
    from .clientkeys import startup_issues
    from .observability.shared import SharedDir
    from .reload import keep_last_good

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"ctxwarden: config refused:\n{exc}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    # Unset key variables, an upstream key no client key guards: refused before
    # anything listens (the app checks every reload the same way).
    issues = startup_issues(config, host)
    if issues:
        print(f"ctxwarden: config refused:\n{ConfigError(issues)}", file=sys.stderr)
        return 2
    workers = args.workers or config.server.workers
    fix_mmap_threshold()
    configure_logging(config.logging, args.log_level)
    if workers == "auto":
        workers = auto_workers()
        log.info("serving with %d worker process(es): workers=auto, from the CPUs this process may use", workers)
    # uvicorn re-raises the stop signal once its graceful shutdown is done,
    # which would end the process as killed by SIGTERM; with a no-op handler
    # of ours in place, a clean shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # uvicorn's own log handlers would replace ours (log_config=None keeps
    # them), and a log_level of its own would pin its loggers' level: without
    # one they follow the root logger, whose level a reload changes.
    options = dict(host=host, port=port, log_config=None, access_log=False,
                   proxy_headers=False, server_header=False, lifespan="on",
                   timeout_graceful_shutdown=config.server.grace_period)
    if workers == 1:
        uvicorn.run(create_app(config, config_path=args.config, listen_host=host), **options)
        return 0
    with tempfile.TemporaryDirectory(prefix="ctxwarden-") as state:
        SharedDir.create(state)
        os.environ[CONFIG_ENV] = os.path.abspath(args.config) if args.config else ""
        os.environ[LISTEN_HOST_ENV] = host
        # Workers take --log-level from here; without it, from each config they load.
        if args.log_level:
            os.environ[LOG_LEVEL_ENV] = args.log_level
        else:
            os.environ.pop(LOG_LEVEL_ENV, None)
        if args.config:
            os.environ[LAST_GOOD_ENV] = os.path.join(state, "last-good.xml")
            keep_last_good(args.config, os.environ[LAST_GOOD_ENV])
        uvicorn.run("ctxwarden.app:create_app_from_environment", factory=True, workers=workers, **options)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .clientkeys import startup_issues

    try:
        config = load_config(args.file)
        # What serve would refuse too: key variables unset in this environment,
        # an upstream key no client key guards on <server host>.
        issues = startup_issues(config, config.server.host)
        if issues:
            raise ConfigError(issues)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    print(f"{args.file}: OK")
    return 0


class _InputRefused(Exception):
    """A command's config or input file cannot be used; already reported."""


def _load_inputs(args: argparse.Namespace, parse: Callable[[bytes, Config], T]) -> tuple[Config, T]:
    """The config and the parsed input file, or a one-line reason on stderr."""
    try:
        config = load_config(args.config)
        return config, parse(Path(args.file).read_bytes(), config)
    except ConfigError as exc:
        reason = f"config refused:\n{exc}"
    except OSError as exc:
        reason = f"cannot read {args.file}: {exc.strerror}"
    except ProxyError as exc:  # invalid JSON, or the parser's refusal
        reason = f"{args.file}: {exc.message}"
    print(f"ctxwarden: {reason}", file=sys.stderr)
    raise _InputRefused


def _explain(args: argparse.Namespace) -> int:
    import json

    from .chat import explain_request

    _, report = _load_inputs(args, lambda raw, config: explain_request(config, args.dialect, raw))
    json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0


def _credential_headers() -> list[tuple[bytes, bytes]]:
    """The credentials the SDKs would send, from their usual variables."""
    return list(dict.fromkeys(header for dialect in DIALECTS.values() if (key := os.environ.get(dialect.sdk_key_env))
                              for header in dialect.credential_headers(key)))


class _Progress:
    """tasks done/total and failures on stderr: a bar on a terminal, lines otherwise."""

    WIDTH = 30

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, failures: int) -> None:
        filled = self.WIDTH * done // total if total else self.WIDTH
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} done, {failures} failed"
        if self.tty:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _run_parallel(args: argparse.Namespace) -> int:
    import json

    import anyio

    from .wirejson import parse_json

    from .app import Proxy
    from .parallel.endpoint import run_parallel
    from .parallel.graph import parse_task_graph

    config, graph = _load_inputs(
        args, lambda raw, config: parse_task_graph(parse_json(raw), config.parallel_execution.max_tasks))
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout

    async def run():
        proxy = Proxy(config, None)
        await proxy.start()
        try:
            return await run_parallel(proxy.gateway, proxy.gate, graph, _credential_headers(),
                                      config.parallel_execution, on_progress=_Progress())
        finally:
            await proxy.close()

    try:
        results = anyio.run(run)
        for result in results:
            out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0 if all(r.status == "ok" for r in results) else 1


def _workers_arg(value: str) -> int | Literal["auto"]:
    if value == "auto":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError("a positive number or auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxwarden", description="Token-saving reverse proxy for LLM APIs")
    parser.add_argument("--version", action="version", version=f"ctxwarden {metadata.version('ctxwarden')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="config XML (default: the shipped default config)")
    serve.add_argument("--host", help="listen address (overrides <server host>)")
    serve.add_argument("--port", type=int, help="listen port (overrides <server port>)")
    serve.add_argument("--workers", type=_workers_arg,
                       help="worker processes, or auto: one per usable CPU, at most 8 (overrides <server workers>)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="overrides <logging level>")
    serve.set_defaults(run=_serve)

    validate = commands.add_parser("validate", help="check a config file against the schema")
    validate.add_argument("file")
    validate.set_defaults(run=_validate)

    explain = commands.add_parser("explain", help="show how a chat request would be rewritten (no upstream call)")
    explain.add_argument("file", help="a chat request body as JSON")
    explain.add_argument("--config", help="config XML (default: the shipped default config)")
    explain.add_argument("--dialect", default=DEFAULT.name, choices=list(DIALECTS))
    explain.set_defaults(run=_explain)

    parallel = commands.add_parser("run-parallel", help="run a task graph (as POST /_ctxwarden/parallel takes)")
    parallel.add_argument("file", help='{"tasks": [...]} as JSON')
    parallel.add_argument("--config", help="config XML (default: the shipped default config)")
    parallel.add_argument("--output", help="JSONL file for the results (default: standard output)")
    parallel.set_defaults(run=_run_parallel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _InputRefused:
        return 2
    except ConfigError as exc:  # a key variable unset when run-parallel starts its proxy
        print(f"ctxwarden: config refused:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
