"""Let glibc's malloc keep the memory torch frees, so that its next tensors reuse it instead of faulting in new pages.

Why: torch allocates every activation and product of the Jacobian engine anew, most of them above
glibc's mmap threshold or in a per-thread arena whose heaps are capped at 64 MiB. glibc then maps
each one afresh, the kernel zeroes its pages on first touch, and freeing unmaps them again: one
image's subspaces took ~550,000 minor page faults and a fifth of their time in the kernel. With
one arena and high mmap and trim thresholds (``mallopt(3)``; the knobs glibc documents for this)
the freed memory stays in the heap and the faults all but vanish: a 16-image mining run went from
22-27 s to ~6 s of system time and 1.06-1.13x faster, in process and on Dask workers alike; a 64-image
run in process 1.03x (``benchmarks/RESULTS.md``, issue 14 tenth round). The cost: the process keeps up
to ``KEEP_BYTES`` of freed memory for its next allocations, and its threads share one arena's lock (two
threads of batched U-Net passes took ~15% longer).

Only glibc has these knobs. A user who tunes malloc through its environment variables
(``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) keeps their settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Freed memory the heap keeps, and the size from which a block is mapped on its own instead: the process holds at
# most this much memory it does not use.
KEEP_BYTES = 1 << 30
MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc malloc to one arena with mmap and trim thresholds of ``KEEP_BYTES``, for the whole process.

    Threads that have allocated before keep their own arenas, so call it early: importing ``localedit`` does.
    Returns whether it was applied: False off glibc, or when the environment names any of ``MALLOC_ENV``.
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in MALLOC_ENV):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all([mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_THRESHOLD, KEEP_BYTES), mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)])
