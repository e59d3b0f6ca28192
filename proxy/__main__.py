"""The `ctxwarden` command: serve, validate, explain, run-parallel."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal, TypeVar

from tqdm import tqdm

from .config import Config, ConfigError, load_config
from .dialects import DIALECTS
from .errors import ProxyError
from .heap import fix_mmap_threshold
from .observability.logs import configure_logging
from .workers import Listening, auto_workers

T = TypeVar("T")
log = logging.getLogger("ctxwarden")

# uvicorn as every server of the proxy runs it: no client address taken from
# X-Forwarded-For, and no Server or Date field of its own: a relayed answer
# carries the upstream's (two Date fields would make it invalid), and ProxyApp
# dates the proxy's own answers.
SERVER_OPTIONS = {"proxy_headers": False, "server_header": False, "date_header": False}


def _serve(args: argparse.Namespace) -> int:
    import tempfile

    import uvicorn

    from .app import (CONFIG_ENV, LAST_GOOD_ENV, LISTEN_HOST_ENV, LISTEN_PORT_ENV, LOG_LEVEL_ENV, WORKERS_ENV,
                      create_app)
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
    counted = workers == "auto"
    if workers == "auto":
        workers = auto_workers(shared_backend=config.cache.backend == "redis")
    _log_start(config, host, port, workers, counted)
    # uvicorn re-raises the stop signal once its graceful shutdown is done,
    # which would end the process as killed by SIGTERM; with a no-op handler
    # of ours in place, a clean shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # uvicorn's own log handlers would replace ours (log_config=None keeps
    # them), and a log_level of its own would pin its loggers' level: without
    # one they follow the root logger, whose level a reload changes.
    options = dict(host=host, port=port, log_config=None, access_log=False, **SERVER_OPTIONS, lifespan="on",
                   timeout_graceful_shutdown=config.server.grace_period)
    if workers == 1:
        uvicorn.run(create_app(config, config_path=args.config, listen_host=host,
                               listening=Listening(host, port, 1)), **options)
        return 0
    with tempfile.TemporaryDirectory(prefix="ctxwarden-") as state:
        SharedDir.create(state)
        os.environ[CONFIG_ENV] = os.path.abspath(args.config) if args.config else ""
        os.environ[LISTEN_HOST_ENV] = host
        os.environ[LISTEN_PORT_ENV] = str(port)
        os.environ[WORKERS_ENV] = str(workers)
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


def _log_start(config: Config, host: str, port: int, workers: int, counted: bool) -> None:
    """What an operator checks first: which file, where it listens, the
    upstreams (never a key: at most the variable that holds one)."""
    from .admin import unset_token_warning
    from .cache.redis import redact_url

    shown_host = f"[{host}]" if ":" in host else host
    start = {"config": config.source, "listen": f"{shown_host}:{port}", "workers": workers,
             "dashboard": f"http://{shown_host}:{port}/_ctxwarden/dashboard"}
    if counted:
        start["workers_from"] = ("auto: the CPUs this process may use, Redis sharing the cache"
                                 if config.cache.backend == "redis" else "auto: one, the cache is in memory")
    log.info("starting", extra={"fields": start})
    for upstream in config.upstreams:
        log.info("upstream", extra={"fields": {
            "name": upstream.name, "dialect": upstream.dialect, "base_url": redact_url(upstream.base_url),
            "api_key_env": upstream.api_key_env}})
    warning = unset_token_warning(config)
    if warning:
        log.warning("%s", warning)


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
    from .admin import unset_token_warning

    warning = unset_token_warning(config)
    if warning:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
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
    from .explain_table import render_table

    def explain(raw: bytes, config: Config) -> tuple[str, str, dict]:
        dialect, told_by = _explain_dialect(args.dialect, raw)
        return dialect, told_by, explain_request(config, dialect, raw)

    _, (dialect, told_by, report) = _load_inputs(args, explain)
    if args.json:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        sys.stdout.write(render_table(report, dialect, told_by))
    return 0


def _explain_dialect(named: str | None, raw: bytes) -> tuple[str, str]:
    """The dialect to explain a body in, and what told it: --dialect, else the body's shape."""
    from .dialects import dialect_of_body
    from .errors import BadRequest
    from .wirejson import parse_json

    if named:
        return named, "--dialect"
    body = parse_json(raw)
    try:
        dialect = dialect_of_body(body)
    except BadRequest as exc:
        raise BadRequest(f"{exc.message}; say which with --dialect {'|'.join(DIALECTS)}") from exc
    return dialect.name, "told by the body: " + ", ".join(dialect.body_signs(body))


def _credential_headers() -> list[tuple[bytes, bytes]]:
    """The credentials the SDKs would send, from their usual variables."""
    return list(dict.fromkeys(header for dialect in DIALECTS.values() if (key := os.environ.get(dialect.sdk_key_env))
                              for header in dialect.credential_headers(key)))


class _Progress:
    """run-parallel's progress on stderr: tqdm's bar on a terminal (tasks done,
    elapsed, rate, failures), a line per finished task otherwise (a CI log),
    then a summary naming every task that did not succeed."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: tqdm | None = None
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, failures: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True, disable=not self.tty)
        self.bar.set_postfix_str(f"{failures} failed", refresh=False)
        self.bar.update(done - self.bar.n)
        if not self.tty:
            print(f"{done}/{total} done, {failures} failed, {self.elapsed()} elapsed", file=sys.stderr, flush=True)

    def elapsed(self) -> str:
        return tqdm.format_interval(time.monotonic() - self.started)

    def summary(self, results: list) -> None:
        if self.bar is not None:
            self.bar.close()
        failed = [r for r in results if r.status != "ok"]
        print(f"run-parallel: {len(results)} tasks in {self.elapsed()}, {len(results) - len(failed)} ok, "
              f"{len(failed)} failed{':' if failed else ''}", file=sys.stderr)
        for result in failed:
            reason = result.error or (f"blocked by {result.blocked_by}" if result.blocked_by else "")
            print(f"  {result.id}: {result.status}{' - ' + reason.splitlines()[0] if reason else ''}",
                  file=sys.stderr)


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

    progress = _Progress()

    async def run():
        proxy = Proxy(config, None)
        await proxy.start()
        try:
            return await run_parallel(proxy.gateway, proxy.gate, graph, _credential_headers(),
                                      config.parallel_execution, on_progress=progress)
        finally:
            await proxy.close()

    try:
        results = anyio.run(run)
        progress.summary(results)
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


CONFIG_HELP = "config XML file (default: the shipped default config)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxwarden", description="Token-saving reverse proxy for LLM APIs")
    parser.add_argument("--version", action="version", version=f"ctxwarden {metadata.version('ctxwarden')}",
                        help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do; COMMAND --help tells more")

    serve = commands.add_parser("serve", help="run the proxy", description="Run the proxy until SIGTERM or Ctrl-C.")
    serve.add_argument("--config", metavar="FILE", help=CONFIG_HELP + "; watched and reloaded when it changes")
    serve.add_argument("--host", help="listen address (overrides <server host>)")
    serve.add_argument("--port", type=int, help="listen port (overrides <server port>)")
    serve.add_argument("--workers", type=_workers_arg, metavar="N|auto",
                       help="worker processes, or auto: one with the memory cache, one per usable CPU (at most 8) "
                            "with Redis (overrides <server workers>)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="log level, kept over every reload (overrides <logging level>)")
    serve.set_defaults(run=_serve)

    validate = commands.add_parser(
        "validate", help="check a config file",
        description="Check a config file against the schema, its own rules and what serve would refuse in this "
                    "environment. Prints FILE: OK (exit 0) or one file:line: reason line per problem (exit 1).")
    validate.add_argument("file", metavar="FILE", help="the config XML file to check")
    validate.set_defaults(run=_validate)

    explain = commands.add_parser(
        "explain", help="show how a chat request would be rewritten (no upstream call)",
        description="Run the rewrite on a chat request body without calling upstream, and print per message its "
                    "role, tier, action, reason and tokens before and after, then the decision and the estimated "
                    "input cost of what is sent and of passthrough.")
    explain.add_argument("file", metavar="FILE", help="a chat request body as JSON (what the SDK would POST)")
    explain.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    explain.add_argument("--dialect", choices=list(DIALECTS),
                         help="the body's API (default: told from the body's shape)")
    explain.add_argument("--json", action="store_true",
                         help="print the whole report as JSON (the rewritten request included) instead of a table")
    explain.set_defaults(run=_explain)

    parallel = commands.add_parser(
        "run-parallel", help="run a task graph (as POST /_ctxwarden/parallel takes)",
        description="Run a task graph in process, with a progress bar on stderr; exit 0 when every task is ok.")
    parallel.add_argument("file", metavar="FILE", help='the task graph, {"tasks": [...]}, as JSON')
    parallel.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parallel.add_argument("--output", metavar="FILE", help="JSONL file for the results (default: standard output)")
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
