"""How a person stops a run: the first SIGINT or SIGTERM ends it within seconds, a second one at once.

A task running in a worker thread cannot be interrupted (Python delivers signals to the main
thread only), and on a large model one subspace task runs for minutes; Prefect's flow engine
turns SIGTERM into a crash but then waits for the running tasks, and so did Ctrl-C. Abandoning
them is safe: the run store marks a task's work only after its chunks are written, so a rerun
resumes and recomputes exactly the unmarked work. So the first signal is passed on (Prefect
records the flow run as crashed and unwinds); if the process is still there ``GRACE_SECONDS``
later, or at a second signal, it terminates every process it started (a Prefect server, Dask
workers) and exits with status 128 + the signal number. From the first signal on, the console
no longer shows Prefect's per-run records (a deliberate stop read as three "Crash detected"
ERROR lines) nor Dask's messages about a closing cluster (workers lost, restarted); the server keeps the
records, and the console says in one line that the run stopped.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
from prefect.logging.handlers import PrefectConsoleHandler

from localedit.utils.console import say_stopped
from tasks.worker_setup import console_handlers, is_dask_logger

GRACE_SECONDS = 5.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


def terminate_children(timeout: float = 3.0) -> None:
    """Terminate this process's descendants (SIGTERM, then SIGKILL for those still there after ``timeout``)."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def end(signum: int) -> None:
    """Stop now: say so in one line, terminate the processes this one started, and exit 128 + ``signum``."""
    say_stopped(signum)
    try:
        terminate_children()
    finally:
        sys.stdout.flush()
        os._exit(128 + signum)


RUN_RECORDS = ("prefect.flow_runs", "prefect.task_runs")  # the engine's loggers of flow and task run states


def _not_a_run_record(record: logging.LogRecord) -> bool:
    return not record.name.startswith(RUN_RECORDS)


def _not_from_dask(record: logging.LogRecord) -> bool:
    return not is_dask_logger(record.name)


def quiet_console() -> None:
    """Keep Prefect's flow and task run records (its API handler still sends them), its log shipping's errors and
    Dask's messages off this process's console: after a stop, a closing LocalCluster's scheduler and nannies
    warned of every lost and restarted worker (~6 lines after the one that says the run stopped)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_not_a_run_record)
    # Prefect's log shipping writes "--- Error logging to API ---" itself, as logging does for a failing handler
    # when raiseExceptions is on; the server may be gone before the last logs are sent.
    logging.raiseExceptions = False
    for handler in console_handlers():
        handler.addFilter(_not_from_dask)


def stoppable(fn: Callable) -> Callable:
    """Decorate a flow function: it runs with ``stop_handlers`` installed.

    (A plain wrapper, not ``contextmanager``'s decorator form, which keeps a generator in the
    function and so cannot be pickled with it to a Dask worker.)
    """

    @functools.wraps(fn)
    def run_stoppable(*args, **kwargs):
        with stop_handlers():
            return fn(*args, **kwargs)

    return run_stoppable


@contextmanager
def stop_handlers() -> Iterator[None]:
    """Inside: the first SIGINT/SIGTERM goes on to the handler before (Prefect's, or KeyboardInterrupt) and
    arms a ``GRACE_SECONDS`` timer to ``end``; a second one ends the process at once. Only the main
    thread can install handlers: elsewhere (a flow run in a worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}

    def handler(signum, frame):
        _received.append(signum)
        if len(_received) > 1:
            end(signum)
        quiet_console()
        timer = threading.Timer(GRACE_SECONDS, end, args=(signum,))
        timer.daemon = True
        timer.start()
        chained = previous[signum]
        if callable(chained):
            chained(signum, frame)
        raise KeyboardInterrupt

    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        # Once stopping, the handler stays: the flow has unwound, but closing its cluster and server takes
        # seconds more, and a second signal then must still end the process at once (a new user's second
        # Ctrl-C waited for the grace timer, and cut the server's log drain short: "Error logging to API").
        if not _received:
            for signum, old in previous.items():
                signal.signal(signum, old)
