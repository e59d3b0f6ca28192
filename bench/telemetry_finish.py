"""CPU per request of reporting it: Telemetry.start and .finish for the
record of a plain chat request (metrics, live stats; the request log line
off, as in bench/overhead.py).

    python bench/telemetry_finish.py
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_call_us  # noqa: E402
from ctxwarden.observability import Telemetry  # noqa: E402
from ctxwarden.observability.record import RequestRecord  # noqa: E402

N = 20000


def record() -> RequestRecord:
    return RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions", dialect="openai",
                         upstream="openai", status=200, cache="bypass", rewrite="unchanged", tokens_before=14,
                         tokens_after=14, upstream_seconds=0.0004, overhead_seconds=0.0002)


def main() -> int:
    logging.getLogger("ctxwarden.request").setLevel(logging.WARNING)
    telemetry = Telemetry()
    records = itertools.cycle([record() for _ in range(N)])

    def start_and_finish() -> None:
        r = next(records)
        telemetry.start(r)
        telemetry.finish(r)

    per_request = per_call_us(start_and_finish, N)
    print(load_average())
    print(f"  Telemetry.start + finish: {per_request:.1f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
