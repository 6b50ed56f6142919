"""Write a file so that a crash never leaves it half-written: readers see the old file or the new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a sibling ``<name>.partial`` file, then rename it over ``path`` (atomic on POSIX).

    The parent folder is created if missing. A crash inside ``write`` leaves only the
    ``.partial`` file, which the next write replaces. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)
    return path
