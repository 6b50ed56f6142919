"""How a worker of our ``LocalCluster`` starts: it leaves stopping a run to the flow's process, and keeps quiet
while it closes (Dask's preload hook ``dask_setup``, ``flows.mine.CLUSTER_WORKER_SETUP``).

A stopped run's console is one line (``flows/stopping.py``), but with ``--runner dask`` each worker printed
Dask's traceback of its interrupted task besides (~90 lines for 2 workers): a terminal's Ctrl-C reaches every
process of its group, workers too, and a forked worker had inherited the CLI's SIGTERM-as-KeyboardInterrupt,
which the flow's process sends to what is left after its grace period. Once those signals no longer interrupt
it, a worker closed while its task ran still warned that the task "ended with CancelledError". A cluster at
``--dask-address`` keeps its own signal handling and messages: this module is preloaded only by ours.
"""

from __future__ import annotations

import logging
import signal
import threading

from distributed.core import Status

DASK_LOGGER = "distributed"  # the parent of Dask's loggers
CLOSING = (Status.closing, Status.closing_gracefully, Status.closed)


def is_dask_logger(name: str) -> bool:
    return name.split(".")[0] == DASK_LOGGER


def console_handlers() -> list[logging.Handler]:
    """The handlers Dask's messages can reach a console through: its own on its loggers (Dask installs one when
    it is imported before logging is configured) and the root logger's (Prefect's console handler otherwise)."""
    loggers = [logging.getLogger(), *(logger for name, logger in list(logging.Logger.manager.loggerDict.items())
                                      if isinstance(logger, logging.Logger) and is_dask_logger(name))]
    return [handler for logger in loggers for handler in logger.handlers]


def leave_stopping_to_the_flow() -> None:
    """SIGINT ignored and SIGTERM at its default (the process ends, silently). Only the main thread can set
    them; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def quiet_while_closing(worker) -> None:
    """Drop this process's Dask console messages once ``worker`` (a ``distributed.Worker``) is closing: the
    cluster closes only when the run has ended or stopped, and what the worker cancels then is expected."""

    def open_(record: logging.LogRecord) -> bool:
        return worker.status not in CLOSING or not is_dask_logger(record.name)

    for handler in console_handlers():
        handler.addFilter(open_)


def dask_setup(worker) -> None:
    """Dask's preload hook, run on the worker's main thread as each worker (forked or spawned) starts."""
    leave_stopping_to_the_flow()
    quiet_while_closing(worker)
