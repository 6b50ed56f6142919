"""A throwaway ``prefect server`` on 127.0.0.1: for the command line, tests and benchmarks.

Dask workers and ``prefect worker`` run in other processes: with Prefect's ephemeral API each
would start a server of its own, so they must report to one real server instead. And the
server dies with the process that started it, even by ``kill -9`` (Linux's parent-death
signal): Prefect's own temporary server outlived a killed ``localedit mine``, so the command
line starts this one instead when no ``PREFECT_API_URL`` is configured (``pipeline_server``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the process that started it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def loopback_server(home: str | Path, timeout: float = 300, extra_env: dict[str, str] | None = None,
                    services: bool = True) -> Iterator[str]:
    """Start the server with its own PREFECT_HOME and yield its API URL.

    While inside, PREFECT_API_URL (and ``extra_env``) are set in this process's environment, so
    child processes report to the server; queued run logs and events are sent before it stops.
    ``services=False`` runs the API alone (no scheduler or other loop services), which a single
    run needs no more than Prefect's ephemeral server does.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", **(extra_env or {})}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    command = [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command + ([] if services else ["--no-services"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        try:
            if "prefect.logging.handlers" in sys.modules:
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)
                EventsWorker.drain_all()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def pipeline_server() -> Iterator[str]:
    """The command line's Prefect API: the configured PREFECT_API_URL if there is one, else a loopback
    server under this user's PREFECT_HOME (run history stays where Prefect's own temporary server kept it)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    with loopback_server(PREFECT_HOME.value(), services=False) as url:
        with temporary_settings(updates={PREFECT_API_URL: url}):  # settings were read at import
            yield url
