"""A throwaway ``prefect server`` on 127.0.0.1, for the tests and benchmarks that need a real one.

Dask workers and ``prefect worker`` run in other processes: with Prefect's ephemeral API each
would start a server of its own, so they must report to one real server instead.
"""

from __future__ import annotations

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def loopback_server(home: str | Path, timeout: float = 300, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the server with its own PREFECT_HOME and yield its API URL.

    While inside, PREFECT_API_URL (and ``extra_env``) are set in this process's environment, so
    child processes report to the server; queued run logs and events are sent before it stops.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", **(extra_env or {})}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    proc = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
