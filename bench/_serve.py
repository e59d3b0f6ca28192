"""Serve the fake upstream or the proxy for the benchmark: one uvicorn worker,
uvloop + httptools, no access log. Optionally under cProfile.

The proxy is built by the same factory as `ctxwarden serve`'s workers and as
granian's (`ctxwarden.app:create_app_from_environment`, config from
$CTXWARDEN_CONFIG), so that bench/overhead.py --server compares servers under
the same app.

    python bench/_serve.py fake  --port 9001
    python bench/_serve.py proxy --port 9002 --config cfg.xml [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["fake", "proxy"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--profile", help="write cProfile stats here on exit")
    args = parser.parse_args()

    import uvicorn

    if args.what == "fake":
        from tests.fake_upstream import create_app as create_fake

        app = create_fake()
        # uvicorn's defaults, as an upstream behind its own load balancer would run
        options: dict = {}
    else:
        from ctxwarden.__main__ import SERVER_OPTIONS
        from ctxwarden.app import CONFIG_ENV, LOG_LEVEL_ENV, create_app_from_environment

        os.environ[CONFIG_ENV] = os.path.abspath(args.config) if args.config else ""
        os.environ.setdefault(LOG_LEVEL_ENV, "warning")
        app = create_app_from_environment()
        options = SERVER_OPTIONS   # as `ctxwarden serve` runs it
    logging.getLogger("ctxwarden").setLevel(logging.WARNING)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_level="warning",
        workers=1,
        backlog=4096,
        **options,
    )
    server = uvicorn.Server(config)
    if args.profile:
        # CPU time, not wall time: on a busy machine the time the process waits
        # descheduled (or a loopback write spends running the peer) is charged
        # to no function
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        try:
            server.run()
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
