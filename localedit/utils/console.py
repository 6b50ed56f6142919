"""One-line console messages (warnings, a stop) that do not run into a live progress bar, and the line a stopped
command ends with."""

from __future__ import annotations

import signal
import sys
import threading

from tqdm.auto import tqdm

CLEAR_LINE = "\r\x1b[K"  # back to the line's start, erase it (ANSI): what a terminal's bar has drawn there


def line_start() -> str:
    """What a message to stderr starts with so that it does not run on from a progress bar's line: on a terminal,
    ``CLEAR_LINE`` (the bar draws itself again at its next update), whichever process drew it (a Dask worker draws
    the catalogue build's); elsewhere nothing."""
    return CLEAR_LINE if sys.stderr.isatty() else ""


def say(line: str) -> None:
    """Write ``line`` to stderr on a line of its own, also while a progress bar is drawn: this process's tqdm bars
    are cleared first and drawn again after it, and ``line_start`` clears another process's (written plainly,
    "localedit: stopped ..." ran on from the end of a bar's line)."""
    tqdm.write(line_start() + line, file=sys.stderr)
    sys.stderr.flush()


_stop_said = threading.Event()


def say_stopped(signum: int) -> None:
    """Say ``stopped_line(signum)`` as the command's last line, once per command (``new_command``): the command says
    it when the run has unwound, and the grace timer of ``flows.stopping`` when it has not within its seconds; both
    happened when closing a Dask cluster outlasted the timer, and the line came twice. A progress bar of this
    process was drawn again below it (``tqdm.write`` does that), so the bars are put away first."""
    if _stop_said.is_set():
        return
    _stop_said.set()
    for bar in list(tqdm._instances):  # this process's bars: cleared, and never drawn again below the line
        bar.clear()
        bar.disable = True
    # In a file a bar's line has no end (it redraws with \r), and another process's bar (a Dask worker's) may be on
    # it: the line starts on a line of its own there; on a terminal ``say`` clears the bar's line instead.
    say(("" if sys.stderr.isatty() else "\n") + stopped_line(signum))


def new_command() -> None:
    """A command starts (``localedit.cli.main``): a stop of it is said again, even in a process that said one."""
    _stop_said.clear()


def stopped_line(signum: int) -> str:
    """What a command stopped by ``signum`` says last (it exits with 128 + ``signum``)."""
    return (f"localedit: stopped by {signal.Signals(signum).name}; finished work is kept (rerun the same command "
            "to resume)")
