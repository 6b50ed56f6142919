"""What counts as bad input, and the checks of output paths that are made before anything is written.

Bad input fails once, in one line: the command line prints ``localedit: error: ...`` and exits
2, and the pipeline never retries it, because a retry would fail the same way (retries are for
crashes and resources: out of memory, a full disk, a lost worker).
"""

from __future__ import annotations

import os
from pathlib import Path

# Exceptions that mean "the input is wrong", wherever they are raised.
BAD_INPUT = (ValueError, LookupError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
             IsADirectoryError, PermissionError)


def _creatable(path: Path, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable directory."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be created: {ancestor} is not writable")


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """A directory a command may create or add to; refused (ValueError) if it or a parent is a file, or unwritable."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} is not writable")
    else:
        _creatable(path, what)
    return path


def check_output_file(path: str | Path, suffix: str, what: str = "--out") -> Path:
    """A file a command may create or replace, named ``*{suffix}``; refused (ValueError) otherwise."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{what} {path}: the file is written as {suffix[1:].upper()}; give a name ending in {suffix}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    if path.exists():
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} cannot be replaced: {path.parent} is not writable")
    else:
        _creatable(path, what)
    return path
