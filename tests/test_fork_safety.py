"""A process forked while another thread writes to a rich logging console can still log (Dask workers forked by
``flows.mine.local_cluster``): the lock held at the fork would otherwise be held forever in the child."""

import io
import logging
import os
import signal
import threading
import time

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.logging import RichHandler

from tasks.fork_safety import logging_consoles, renew_console_locks_after_fork

CHILD_SECONDS = 20  # a child that logs one line and exits takes milliseconds; a hung one never ends


def _exit_code_within(pid: int, seconds: float) -> int | None:
    """The forked child's exit code, or None (and the child killed) if it has not ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_child_forked_while_another_thread_holds_the_console_lock_can_log():
    console = Console(file=io.StringIO())
    logger = logging.getLogger("tests.fork_safety")
    handler = RichHandler(console=console)
    logger.addHandler(handler)
    renew_console_locks_after_fork()
    parents_lock = console._lock
    holding, release = threading.Event(), threading.Event()

    def write_slowly():  # a parent thread in the middle of a console write when the fork happens
        with console._lock:
            holding.set()
            release.wait()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    holding.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists, the writer's lock would be held for good
            logger.warning("a worker's first log line")
            os._exit(0)
    finally:
        release.set()
        writer.join()
        logger.removeHandler(handler)
    code = _exit_code_within(pid, CHILD_SECONDS)
    assert code is not None, "the forked child hung on the console lock"
    assert code == 0
    # the parent keeps its own lock (only the child's is renewed), released by its writer
    assert console._lock is parents_lock
    assert parents_lock.acquire(blocking=False)
    parents_lock.release()


def test_prefect_console_handler_is_among_the_consoles_renewed():
    # the handler that hung a worker: Prefect's logging configuration puts it on the root logger
    logger = logging.getLogger("tests.fork_safety.prefect")
    handler = PrefectConsoleHandler(stream=io.StringIO())
    logger.addHandler(handler)
    try:
        assert any(console is handler.console for console in logging_consoles())
    finally:
        logger.removeHandler(handler)
