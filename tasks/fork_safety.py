"""Fresh console locks in forked children, so a Dask worker forked from this process can log.

Our ``LocalCluster`` forks its workers from the flow's process (``flows.mine.local_cluster``), which
has other threads running: Prefect's, Dask's IO loop, the loopback server's start. A lock that one of
them holds at the moment of the fork stays held forever in the child, where that thread does not
exist. CPython renews ``logging``'s handler locks after a fork and Prefect renews its services, but
the rich ``Console`` behind Prefect's console handler keeps its locks: a 2-worker cluster's second
worker hung for good at its first log line ("Import preload module"), inside ``Console._write_buffer``
(issue 14, ninth round). ``renew_console_locks_after_fork`` mends that for every later fork.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from rich.console import Console

CONSOLE_LOCKS = ("_lock", "_record_buffer_lock")  # rich.console.Console's RLocks (rich 13-15)


def logging_consoles() -> list[Console]:
    """The rich consoles that this process's logging handlers write to (Prefect's and rich's console handlers)."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    consoles = (getattr(handler, "console", None) for logger in loggers for handler in logger.handlers)
    return list({id(console): console for console in consoles if isinstance(console, Console)}.values())


def renew_console_locks() -> None:
    """Give every logging console new, unheld locks (in a forked child, where only the forking thread lives)."""
    for console in logging_consoles():
        for name in CONSOLE_LOCKS:
            if hasattr(console, name):
                setattr(console, name, threading.RLock())


@functools.cache  # once per process: a registration cannot be undone, and twice would renew twice
def renew_console_locks_after_fork() -> None:
    """Run ``renew_console_locks`` in the child of every later fork of this process."""
    os.register_at_fork(after_in_child=renew_console_locks)
