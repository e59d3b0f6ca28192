"""Keep the process's memory from growing with each large request.

glibc raises its mmap threshold every time a large block is freed, so after a
few big request bodies, blocks of hundreds of KiB come from the heap, whose
free space fragments and is never given back: 1,000 requests with 256 KiB
outputs left 577 MiB resident. A fixed threshold of 128 KiB keeps large
blocks mapped on their own and unmapped when freed (`python bench/memory.py`
shows the difference). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3   # glibc's malloc.h
ENV = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold() -> bool:
    """Fix the threshold in this process, and for processes it starts (worker
    processes read the variable at start). True when glibc took it."""
    os.environ.setdefault(ENV, str(MMAP_THRESHOLD))
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
