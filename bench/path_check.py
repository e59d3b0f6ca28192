"""CPU per request of checking its path (routing.check_path), each time and
as the gateway does it (remembered for paths it has seen).

    python bench/path_check.py
"""

from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxwarden.gateway import _checked_path  # noqa: E402
from ctxwarden.routing import check_path  # noqa: E402

PATH = b"/v1/chat/completions"


def main() -> int:
    n = 50000
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, call in (("check_path", lambda: check_path(PATH)), ("gateway._checked_path", lambda: _checked_path(PATH))):
        seconds = min(timeit.repeat(call, number=n, repeat=5)) / n
        print(f"  {name:24} {seconds * 1e6:6.2f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
