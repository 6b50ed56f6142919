"""One-line console messages (warnings, a stop) that do not run into a live progress bar, and the line a stopped
command ends with."""

from __future__ import annotations

import signal
import sys

from tqdm.auto import tqdm

CLEAR_LINE = "\r\x1b[K"  # back to the line's start, erase it (ANSI): what a terminal's bar has drawn there


def say(line: str) -> None:
    """Write ``line`` to stderr on a line of its own: written plainly, "localedit: stopped ..." ran on from the end
    of a progress bar's line. This process's tqdm bars are cleared first and drawn again after it; on a terminal the
    line is also cleared first, for a bar that another process draws (a Dask worker's catalogue build)."""
    tqdm.write(CLEAR_LINE + line if sys.stderr.isatty() else line, file=sys.stderr)
    sys.stderr.flush()


def stopped_line(signum: int) -> str:
    """What a command stopped by ``signum`` says last (it exits with 128 + ``signum``)."""
    return (f"localedit: stopped by {signal.Signals(signum).name}; finished work is kept (rerun the same command "
            "to resume)")
