"""Let glibc's malloc keep the memory torch frees, so that its next tensors reuse it instead of faulting in new pages.

Why: torch allocates every activation and product of the Jacobian engine anew, most of them above
glibc's mmap threshold or in a per-thread arena whose heaps are capped at 64 MiB. glibc then maps
each one afresh, the kernel zeroes its pages on first touch, and freeing unmaps them again: one
image's subspaces took ~550,000 minor page faults and a fifth of their time in the kernel. With
one arena and high mmap and trim thresholds (``mallopt(3)``; the knobs glibc documents for this)
the freed memory stays in the heap and the faults all but vanish: a 16-image mining run went from
22-27 s to ~6 s of system time and 1.06-1.13x faster, in process and on Dask workers alike; a 64-image
run in process 1.03x (``benchmarks/RESULTS.md``, issue 14 tenth round). The cost: its threads share one
arena's lock (two threads of batched U-Net passes took ~15% longer), and the heap is trimmed only from its
top, so a process keeps most of its peak heap (10 GB of 100 MB tensors, all freed, stayed resident). That
suits the pipeline's processes, which hold one model's working set and end with the run or serve the next
task; so ``tasks.runtime`` calls it, and importing ``localedit`` does not.

Only glibc has these knobs. A user who tunes malloc through the environment (any ``MALLOC_*`` variable, or
``GLIBC_TUNABLES`` with a ``glibc.malloc`` setting) keeps their settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# The size from which a block is mapped on its own, and the free top of the heap beyond which glibc returns
# memory. Freed memory below a block still in use stays whatever its size (see the module docstring).
KEEP_BYTES = 1 << 30
MALLOC_ENV_PREFIX = "MALLOC_"  # glibc's malloc variables: MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_, ...
TUNABLES_ENV, MALLOC_TUNABLES = "GLIBC_TUNABLES", "glibc.malloc."


def malloc_tuned_by_environment() -> bool:
    """Whether this process's environment sets any of glibc malloc's knobs."""
    return (any(name.startswith(MALLOC_ENV_PREFIX) for name in os.environ)
            or MALLOC_TUNABLES in os.environ.get(TUNABLES_ENV, ""))


def keep_freed_memory() -> bool:
    """Set glibc malloc to one arena with mmap and trim thresholds of ``KEEP_BYTES``, for the whole process.

    Threads that have allocated before keep their own arenas, so call it before the process starts its
    workers' threads (importing ``tasks.runtime`` does). Returns whether it was applied: False off glibc, or when
    ``malloc_tuned_by_environment()``.
    """
    if platform.libc_ver()[0] != "glibc" or malloc_tuned_by_environment():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all([mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_THRESHOLD, KEEP_BYTES), mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)])
