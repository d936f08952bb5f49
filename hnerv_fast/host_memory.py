"""Host memory allocator settings for training on the CPU (glibc only; a no-op elsewhere).

glibc serves every block above its mmap threshold (128 KiB at start, adjusted as the process runs) with
a fresh mmap and unmaps it again on free. A CPU training step allocates and frees the same few-megabyte
activations every step, so each step page-faults and zero-fills them anew, and how often depends on
where that dynamic threshold happens to settle in this run. Keeping freed blocks in the heap removes
both: the cascade's stage_32 step (tiny config, fp32 eager) took 46-54 ms in 8 of 12 processes without it
and 38-41 ms in 13 of 17 with it (benchmarks/RESULTS.md); the dual-head step is unchanged.

The cost: up to `TRIM_THRESHOLD` of freed memory stays with the process instead of going back to the OS.
A user who set glibc's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ keeps their settings.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest accepted mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 4 MiB * sizeof(long));
# larger blocks are rare in a step and still get their own mapping.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = False


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds once per process. True when they are (now or already) set;
    False on a non-glibc platform or when the user's environment sets them."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
