"""CPU per request of checking its path (routing.check_path), each time and
as the gateway does it (remembered for paths it has seen).

    python bench/path_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_call_us  # noqa: E402
from ctxwarden.gateway import _checked_path  # noqa: E402
from ctxwarden.routing import check_path  # noqa: E402

PATH = b"/v1/chat/completions"


def main() -> int:
    print(load_average())
    for name, call in (("check_path", lambda: check_path(PATH)), ("gateway._checked_path", lambda: _checked_path(PATH))):
        print(f"  {name:24} {per_call_us(call, 50000, repeat=5):6.2f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
