"""How much latency and throughput does ctxwarden cost, and LiteLLM's proxy?

Starts the fake upstream (tests/fake_upstream.py) and the proxy in front of it
as separate processes (one worker each; uvicorn with uvloop + httptools unless
--server says otherwise), optionally LiteLLM's proxy in front of the same fake,
then sends the same requests to the fake directly and through each proxy, side
by side in one run, and prints p50/p99 latency, req/s and the added latency for:

  (a) one client sending back to back (plain and streaming; one request to each
      target in turn, the order shuffled, so drift affects all alike; LiteLLM
      takes turns with direct in a rotation of its own, see below),
  (b) 50 concurrent clients (keep-alive connections), one target after another,
  (c) time to first byte of a stream (first SSE event), direct vs proxied,

and the CPU time per request of every server process (from /proc).

LiteLLM spends about 10 ms of CPU on a request, 40 times what the others
spend: between two requests of the others it would leave their caches cold,
and so ctxwarden's one-client figures would depend on whether LiteLLM is
installed. Its one-client rows therefore come from a rotation of its own with
direct, and its added latency is taken against that rotation's direct;
--one-rotation puts every target in one rotation instead.

The load generator (bench/_overhead_load.py) is a minimal raw-asyncio HTTP/1.1
client on uvloop, so that it costs far less CPU than the servers it measures
(wrk is used for an extra 50-client plain figure when it is installed).

    python bench/overhead.py                 # N=2000 per scenario and target
    python bench/overhead.py --n 5000 --concurrency 50
    python bench/overhead.py --profile /tmp/proxy.prof   # cProfile the proxy
    python bench/overhead.py --via-cli       # start the proxy with `ctxwarden serve`
    python bench/overhead.py --repeat 3      # three runs, then each target's median over them

    # a LiteLLM column: its proxy in a separate venv, never in ctxwarden's
    bench/litellm_venv.sh                    # -> /tmp/litellm-venv
    python bench/overhead.py --litellm-python /tmp/litellm-venv/bin/python
    LITELLM_PYTHON=/tmp/litellm-venv/bin/python python bench/overhead.py

    # another version of ctxwarden beside this one, in the same run: a checkout
    # with its own venv (e.g. git worktree add /tmp/base main && cd /tmp/base &&
    # python -m venv .venv && .venv/bin/pip install -e .)
    python bench/overhead.py --baseline /tmp/base

    # the ASGI server under the same app (pip install granian first)
    python bench/overhead.py --server granian
    python bench/overhead.py --server uvicorn,granian    # both, side by side
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _overhead_load import (  # noqa: E402
    HOST, PLAIN_BODY, STREAM_BODY, Result, concurrent, loadavg, run_wrk, single_client,
)
from _overhead_procs import (  # noqa: E402
    SERVERS, StartError, fake_command, granian_version, litellm_python, litellm_version, proxy_command,
    start, start_litellm, stop, tail,
)
from tests.servers import free_port, proxy_config_xml  # noqa: E402

# request logging off in the proxy, as in LiteLLM below: the benchmark measures
# forwarding, not writing a log line per request
BENCH_LOGGING = '  <logging level="warning" requests="false"/>\n'
T = TypeVar("T")
MAX_RESTARTS = 5   # of a crashing server, per scenario


@dataclass
class Target:
    name: str
    port: int
    pid: int | None  # the process (and its children) charged with the CPU
    results: dict[str, Result] = field(default_factory=dict)
    # direct's results in this target's own one-client rotation, where it had one
    reference: dict[str, Result] = field(default_factory=dict)
    # starts the target's server again on the same port (LiteLLM's: it crashes
    # now and then, and one crash should not cost the whole run); None: not restarted
    restart: Callable[[], subprocess.Popen] | None = None
    proc: subprocess.Popen | None = None
    crashes: list[str] = field(default_factory=list)

    def again_if_crashed(self, scenario: str, measure_once: Callable[[], T]) -> T:
        """`measure_once()`; when it failed because this target's server died,
        the server is started again and the scenario measured again from its
        start, at most MAX_RESTARTS times."""
        for restarts in range(MAX_RESTARTS + 1):
            try:
                return measure_once()
            except (RuntimeError, OSError, asyncio.IncompleteReadError):
                crashed = self.restart is not None and self.proc is not None and self.proc.poll() is not None
                if not crashed or restarts == MAX_RESTARTS:
                    raise
                self.crashes.append(f"{self.name} exited with code {self.proc.returncode} during '{scenario}'; "
                                    "started again, and that scenario measured again")
                self.proc = self.restart()
                self.pid = self.proc.pid
        raise AssertionError("unreachable")


def ms(x: float) -> str:
    return f"{x * 1000:7.3f}"


def parse_servers(text: str) -> list[str]:
    servers = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in servers if s not in SERVERS]
    if bad or not servers:
        raise SystemExit(f"--server: one or more of {', '.join(SERVERS)}, comma-separated")
    return servers


def measure(targets: list[Target], fake_pid: int, args: argparse.Namespace) -> dict[str, float | None]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None

    def run(coro):
        return uvloop.run(coro) if uvloop is not None else asyncio.run(coro)

    direct = targets[0]
    apart = [] if args.one_rotation else [t for t in targets if t.name == "litellm"]
    together = [t for t in targets if t not in apart]
    for key, body in (("1 plain", PLAIN_BODY), ("1 stream", STREAM_BODY)):
        for t, res in zip(together, run(single_client([t.port for t in together], [t.pid for t in together],
                                                      body, args.n, args.warmup))):
            t.results[key] = res
        for t in apart:
            t.reference[key], t.results[key] = t.again_if_crashed(key, lambda: run(single_client(
                [direct.port, t.port], [direct.pid, t.pid], body, args.n, args.warmup)))
    for key, body in (("c plain", PLAIN_BODY), ("c stream", STREAM_BODY)):
        for t in targets:
            t.results[key] = t.again_if_crashed(key, lambda: run(concurrent(
                t.port, body, args.n, args.concurrency, t.pid, fake_pid)))
    wrk: dict[str, float | None] = {}
    for t in targets:
        wrk[t.name] = run_wrk(t.port, PLAIN_BODY, args.concurrency, 10)
        if wrk[t.name] is None:
            break
    return wrk


def report(targets: list[Target], wrk: dict[str, float | None], args: argparse.Namespace, notes: list[str],
           started: datetime.datetime, load_before: str) -> list[Check]:
    direct, proxies = targets[0], targets[1:]
    c = args.concurrency
    rows = [("1 client, plain", "1 plain", False), ("1 client, stream (whole)", "1 stream", False),
            ("1 client, stream TTFB", "1 stream", True), (f"{c} clients, plain", "c plain", False),
            (f"{c} clients, stream (whole)", "c stream", False), (f"{c} clients, stream TTFB", "c stream", True)]
    print()
    print(f"overhead.py  started {started:%Y-%m-%d %H:%M %Z}, took {(datetime.datetime.now().astimezone() - started).total_seconds():.0f} s"
          f"\nN={args.n} per scenario and "
          f"target, {os.cpu_count()} CPUs, load average {load_before} before, {loadavg()} after")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    for note in notes + [crash for t in targets for crash in t.crashes]:
        print(note)
    print("latencies in ms; +p50/+p99 = proxied percentile - direct percentile")
    groups = [f"{'direct':^23}"] + [f"{t.name:^39}" for t in proxies]
    print(f"{'':27} | " + " | ".join(groups) + " | err")
    sub = f"{'p50':>7} {'p99':>7} {'req/s':>7}"
    header = f"{'scenario':27} | {sub} | " + " | ".join(f"{sub} {'+p50':>7} {'+p99':>7}" for _ in proxies) + " | "
    print(header)
    print("-" * (len(header) + 4))
    for label, key, ttfb in rows:
        d = direct.results[key]
        cells = [f"{ms(d.pct(50, ttfb))} {ms(d.pct(99, ttfb))} {'' if ttfb else f'{d.rps:7.0f}':>7}"]
        errors = d.errors
        for t in proxies:
            p, own = t.results[key], t.reference.get(key, d)
            p50, p99 = p.pct(50, ttfb), p.pct(99, ttfb)
            cells.append(f"{ms(p50)} {ms(p99)} {'' if ttfb else f'{p.rps:7.0f}':>7} "
                         f"{ms(p50 - own.pct(50, ttfb))} {ms(p99 - own.pct(99, ttfb))}")
            errors += p.errors + (own.errors if own is not d else 0)
        print(f"{label:27} | " + " | ".join(cells) + f" | {errors}")
    for t in proxies:
        if t.reference:
            own = t.reference["1 plain"]
            print(f"{t.name}: 1 client, in a rotation of its own with direct (direct there: plain p50/p99 "
                  f"{ms(own.pct(50)).strip()} / {ms(own.pct(99)).strip()} ms); its +p50/+p99 are against that")
    reconnects = {t.name: sum(r.reconnects for r in [*t.results.values(), *t.reference.values()]) for t in targets}
    if any(reconnects.values()):
        print("requests sent again because the server closed its keep-alive connection before answering: "
              + ", ".join(f"{name} {count}" for name, count in reconnects.items()))
    if wrk.get(direct.name) is not None:
        print(f"wrk -c{c} plain, 10 s: " + ", ".join(f"{t.name} {wrk[t.name]:.0f} req/s" for t in targets))

    print()
    print("CPU time per request, us (from /proc, process and its children; 'direct' = the fake upstream):")
    names = [f"{t.name:>18}" for t in targets]
    print(f"  {'scenario':20} | " + " | ".join(names) + " | fake behind proxy | load gen")
    for label, key in (("1 client, plain", "1 plain"), ("1 client, stream", "1 stream")):
        cells = [f"{'-':>18}"] + [f"{t.results[key].per_request(t.results[key].cpu_server):18.0f}" for t in proxies]
        print(f"  {label:20} | " + " | ".join(cells) + " |")
    for label, key in ((f"{c} clients, plain", "c plain"), (f"{c} clients, stream", "c stream")):
        cells = []
        for t in targets:
            r = t.results[key]
            busy = r.cpu_server / r.wall * 100 if r.wall else float("nan")
            cells.append(f"{r.per_request(r.cpu_server):7.0f} ({busy:3.0f}% cpu)")
        fake = "/".join(f"{t.results[key].per_request(t.results[key].cpu_fake):.0f}" for t in proxies)
        loadgen = "/".join(f"{t.results[key].per_request(t.results[key].cpu_loadgen):.0f}" for t in targets)
        print(f"  {label:20} | " + " | ".join(cells) + f" | {fake:>17} | {loadgen}")
    print("  (1 client: the targets take turns, so the fake's CPU cannot be split between them and"
          f" only the proxies' own is shown;\n   {c} clients: '% cpu' = the process's share of one core while its"
          " run lasted; 'fake behind proxy' and 'load gen' in target order)")

    checks = target_checks(targets, wrk, c)
    if checks:
        print()
        print("targets (ctxwarden):")
        for check in checks:
            print(f"  {check}")
    return checks


@dataclass(frozen=True)
class Check:
    """One of the performance issue's targets, as one run measured it."""

    label: str
    value: float
    limit: float
    at_most: bool          # the value must not exceed the limit (else: must reach it)
    unit: str              # "x", "%" or "ms"
    detail: str = ""       # how the value was made, printed before it

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def shown(self, value: float) -> str:
        return {"x": f"{value:.1f}x", "%": f"{value:.0%}", "ms": f"{value:.3f} ms"}[self.unit]

    def __str__(self) -> str:
        return f"[{'PASS' if self.ok else 'MISS'}] {self.label}: {self.detail}{self.shown(self.value)}"


def target_checks(targets: list[Target], wrk: dict[str, float | None], c: int) -> list[Check]:
    """The performance issue's targets, as ratios within this one run."""
    direct, proxies = targets[0], targets[1:]
    ours = next((t for t in proxies if t.name.startswith("ctxwarden")), None)
    if ours is None:
        return []
    r, d = ours.results, direct.results
    plain = r["c plain"]
    proxy_cpu, fake_cpu = plain.per_request(plain.cpu_server), d["c plain"].per_request(d["c plain"].cpu_server)
    ours_rps = wrk.get(ours.name) or plain.rps
    direct_rps = wrk.get(direct.name) or d["c plain"].rps
    checks = [
        Check(f"CPU per request at most 2x the fake upstream's own ({c} clients, plain)", proxy_cpu / fake_cpu,
              2, True, "x", f"{proxy_cpu:.0f} / {fake_cpu:.0f} us = "),
        Check(f"throughput at least 45% of direct ({c} clients, plain)", ours_rps / direct_rps, 0.45, False, "%"),
        Check("added latency p50 < 0.5 ms (1 client, plain)",
              (r["1 plain"].pct(50) - d["1 plain"].pct(50)) * 1000, 0.5, True, "ms"),
        Check("added latency p99 < 1.5 ms (1 client, plain)",
              (r["1 plain"].pct(99) - d["1 plain"].pct(99)) * 1000, 1.5, True, "ms"),
        Check("stream TTFB added < 0.5 ms (1 client, p50)",
              (r["1 stream"].pct(50, True) - d["1 stream"].pct(50, True)) * 1000, 0.5, True, "ms"),
    ]
    litellm = next((t for t in proxies if t.name == "litellm"), None)
    if litellm is not None:
        theirs = wrk.get(litellm.name) or litellm.results["c plain"].rps
        checks.append(Check(f"at least 20x LiteLLM's throughput ({c} clients, plain)", ours_rps / theirs,
                            20, False, "x"))
    return checks


def summary(runs: list[list[Check]]) -> None:
    """Each target over the runs: its median (PASS or MISS), every run's value."""
    print()
    print(f"targets (ctxwarden) over {len(runs)} runs: the median, then each run's value")
    for column in zip(*runs):
        first, values = column[0], [check.value for check in column]
        median = Check(first.label, statistics.median(values), first.limit, first.at_most, first.unit)
        passed = sum(check.ok for check in column)
        print(f"  {median} ({', '.join(first.shown(v) for v in values)}; {passed} of {len(runs)} runs pass)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="requests per scenario and target (default 2000)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--server", default="uvicorn",
                        help="ASGI server(s) for the proxy, one worker each: uvicorn (uvloop, httptools; default), "
                             "granian (needs `pip install granian`), or both: uvicorn,granian")
    parser.add_argument("--litellm-python", metavar="PATH",
                        help="python of a venv with litellm[proxy] (bench/litellm_venv.sh); default $LITELLM_PYTHON; "
                             "adds a LiteLLM column")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the ctxwarden checked out in DIR, served by DIR/.venv/bin/python "
                             "(uvicorn), as a 'baseline' column: a before/after in one run")
    parser.add_argument("--no-litellm", action="store_true", help="ignore $LITELLM_PYTHON")
    parser.add_argument("--profile", help="run the proxy under cProfile and write the stats here (uvicorn)")
    parser.add_argument("--via-cli", action="store_true", help="start the proxy with `ctxwarden serve` (uvicorn)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="measure K times with the same servers, then print each target's median over the runs")
    parser.add_argument("--one-rotation", action="store_true",
                        help="one client: every target in one rotation, LiteLLM included (see above)")
    parser.add_argument("--server-attrs", default="",
                        help='extra attributes for the config\'s <server> element, e.g. \'max_keepalive_connections="100"\'')
    args = parser.parse_args()
    servers = parse_servers(args.server)
    if (args.profile or args.via_cli) and servers != ["uvicorn"]:
        raise SystemExit("--profile and --via-cli apply to --server uvicorn only")
    if args.profile and args.via_cli:
        raise SystemExit("--profile needs the uvicorn launcher, drop --via-cli")
    llm_python = None if args.no_litellm else litellm_python(args.litellm_python)

    started, load_before = datetime.datetime.now().astimezone(), loadavg()
    tmp = tempfile.TemporaryDirectory()
    fake_port = free_port()
    notes: list[str] = []
    procs = []
    try:
        fake = start(fake_command(fake_port), fake_port, tmp.name, "fake")
        procs.append(fake)
        targets = [Target("direct", fake_port, fake.pid)]
        for server in servers:
            port = free_port()
            cfg = Path(tmp.name) / f"bench-{server}.xml"
            xml = proxy_config_xml(f"http://{HOST}:{fake_port}", port=port)
            if args.server_attrs:
                xml = xml.replace("<server ", f"<server {args.server_attrs} ", 1)
            cfg.write_text(xml.replace("</performance_optimization>", BENCH_LOGGING + "</performance_optimization>"))
            cmd, env = proxy_command(server, port, cfg, via_cli=args.via_cli, profile=args.profile)
            proc = start(cmd, port, tmp.name, f"proxy-{server}", env=env)
            procs.append(proc)
            name = "ctxwarden" if len(servers) == 1 else f"ctxwarden/{server}"
            targets.append(Target(name, port, proc.pid))
            launcher = ("ctxwarden serve" if args.via_cli else "uvicorn 1 worker (uvloop, httptools)"
                        ) if server == "uvicorn" else f"granian {granian_version()} 1 worker (asgi, uvloop)"
            notes.append(f"{name}: {launcher}{', under cProfile (figures inflated)' if args.profile else ''}"
                         f"{', <server ' + args.server_attrs + '>' if args.server_attrs else ''}")
        if args.baseline:
            port = free_port()
            base = Path(args.baseline).absolute()
            cfg = Path(tmp.name) / "bench-baseline.xml"
            xml = proxy_config_xml(f"http://{HOST}:{fake_port}", port=port)
            cfg.write_text(xml.replace("</performance_optimization>", BENCH_LOGGING + "</performance_optimization>"))
            cmd = [str(base / ".venv" / "bin" / "python"), str(base / "bench" / "_serve.py"), "proxy",
                   "--port", str(port), "--config", str(cfg)]
            procs.append(proc := start(cmd, port, tmp.name, "proxy-baseline"))
            targets.append(Target("baseline", port, proc.pid))
            notes.append(f"baseline: ctxwarden in {base}, uvicorn 1 worker (uvloop, httptools)")
        if llm_python:
            port = free_port()
            proc, why = start_litellm(llm_python, fake_port, port, tmp.name)
            if proc is None:
                print(f"LiteLLM column skipped: {why}", file=sys.stderr)
                notes.append("litellm: skipped, could not be started (see above)")
            else:
                procs.append(proc)

                def restart_litellm(port: int = port) -> subprocess.Popen:
                    proc, why = start_litellm(llm_python, fake_port, port, tmp.name)
                    if proc is None:
                        raise StartError(f"LiteLLM could not be started again: {why}")
                    procs.append(proc)
                    return proc

                targets.append(Target("litellm", port, proc.pid, restart=restart_litellm, proc=proc))
                notes.append(f"litellm: LiteLLM {litellm_version(llm_python)} proxy, 1 uvicorn worker, "
                             "no DB/master key/callbacks (bench/_overhead_procs.py)")
        else:
            notes.append("litellm: not measured (give --litellm-python or $LITELLM_PYTHON; bench/litellm_venv.sh)")
        runs = []
        for _ in range(args.repeat):
            # each run's tables printed as it ends, the servers kept for the next
            wrk = measure(targets, fake.pid, args)
            runs.append(report(targets, wrk, args, notes, started, load_before))
            for t in targets:
                t.crashes.clear()
            started, load_before = datetime.datetime.now().astimezone(), loadavg()
    except StartError as exc:
        raise SystemExit(str(exc))
    except RuntimeError as exc:
        # a request failed: say which target it was, with what each server logged last
        ports = ", ".join(f"{t.name} on port {t.port}" for t in targets)
        logs = "\n".join(f"--- {log.name}\n{tail(log, 15)}" for log in sorted(Path(tmp.name).glob("*.log")))
        raise SystemExit(f"{exc}\ntargets: {ports}\n{logs}") from exc
    finally:
        for proc in reversed(procs):
            stop(proc)
        tmp.cleanup()

    if len(runs) > 1 and runs[0]:
        summary(runs)
    if args.profile:
        print(f"\nproxy profile written to {args.profile}; inspect with:\n"
              f"  python -c \"import pstats; pstats.Stats('{args.profile}').sort_stats('cumulative').print_stats(40)\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
