"""The one way into forward-mode AD: ``jvp`` and ``jacfwd`` that no two threads of a process run at once.

PyTorch keeps forward-mode AD levels in process-global state: two threads inside
``torch.func.jvp`` at once corrupt each other's levels ("Trying to access a forward AD level
with an invalid index"), and Prefect runs tasks as threads of one process. So every forward-mode
call in this project (mining, baselines, evaluation, benchmarks, anything added later) goes
through this module, which holds one process-wide re-entrant lock for its duration;
``tests/test_forward_ad.py`` fails if a module imports ``jvp``/``jacfwd`` from torch directly.

``exclusive()`` holds the same lock around a longer stretch (a whole subspace iteration, whose
hooks on a shared U-Net must not interleave with another thread's); the wrappers re-enter it.
Reverse mode (``vjp``) needs no guard. The lock lives in this importable module, so task bodies
that Dask pickles by value still reach the one lock of the process they run in.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.func

_guard = threading.RLock()


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the process's forward-AD guard (re-entrant: ``jvp`` and ``jacfwd`` inside take it again)."""
    with _guard:
        yield


def jvp(func: Callable, primals: tuple, tangents: tuple, **kwargs):
    """``torch.func.jvp`` under the guard; same arguments and result ((outputs, tangent outputs))."""
    with _guard:
        return torch.func.jvp(func, primals, tangents, **kwargs)


def jacfwd(func: Callable, *args, **kwargs) -> Callable:
    """``torch.func.jacfwd`` whose returned function runs under the guard."""
    jacobian = torch.func.jacfwd(func, *args, **kwargs)

    @functools.wraps(jacobian)
    def guarded(*inputs, **kw):
        with _guard:
            return jacobian(*inputs, **kw)

    return guarded
