"""A server for bench/latency_path.py: the fake upstream or the proxy under
uvicorn as bench/_serve.py runs them, with a clock reading (perf_counter, one
clock for every process of the machine) taken at each step of every request;
the readings go to $STAMPS as JSON when the server stops.

    python bench/_stamped.py fake  --port 9001
    python bench/_stamped.py proxy --port 9002 --config cfg.xml
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

now = time.perf_counter
stamps: list[dict[str, float]] = []
current: dict[str, float] = {}


def stamped(owner, name: str, label: str, done: bool = True) -> None:
    """Take a reading when owner.name (a coroutine function) is called, and
    with `done` when it returns."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args, **kwargs):
        current[label] = now()
        try:
            return await original(*args, **kwargs)
        finally:
            if done:
                current[label + " done"] = now()

    setattr(owner, name, wrapper)


def stamp_the_proxy() -> None:
    from ctxwarden import flow, gateway, http11

    sent, parsed = http11.Connection.send_request, http11.Connection.on_headers_complete

    def send_request(self, *args, **kwargs):
        current["upstream write"] = now()
        return sent(self, *args, **kwargs)

    def on_headers_complete(self):
        current["upstream head parsed"] = now()
        return parsed(self)

    http11.Connection.send_request = send_request
    http11.Connection.on_headers_complete = on_headers_complete
    stamped(gateway, "read_body", "body read")
    stamped(gateway, "until_disconnected", "watched", done=False)
    stamped(flow, "chat", "chat flow", done=False)
    stamped(flow, "rewrite", "rewrite")
    stamped(flow, "relay", "relay")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["fake", "proxy"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    import uvicorn

    if args.what == "fake":
        from tests.fake_upstream import create_app as create_fake

        inner, options = create_fake(), {}
    else:
        from ctxwarden.__main__ import SERVER_OPTIONS
        from ctxwarden.app import CONFIG_ENV, LOG_LEVEL_ENV, create_app_from_environment

        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
        os.environ.setdefault(LOG_LEVEL_ENV, "warning")
        inner, options = create_app_from_environment(), SERVER_OPTIONS
        stamp_the_proxy()
    atexit.register(lambda: Path(os.environ["STAMPS"]).write_text(json.dumps(stamps)))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        current.clear()
        current["app called"] = now()

        async def sending(message):
            if message["type"] == "http.response.start":
                current["response head to send"] = now()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                current["response sent"] = now()

        await inner(scope, receive, sending)
        current["app returned"] = now()
        stamps.append(dict(current))

    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", ws="none",
                access_log=False, log_level="warning", lifespan="on", **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
