"""The worker environment the Dask runner sets up: glibc's adaptive mmap threshold kept, a warning where it is not."""

import os
import sys
import warnings

import pytest
from distributed import Client

from flows.mine import WORKER_PRELOAD, local_cluster
from tasks.runtime import MALLOC_TRIM_ENV, warn_if_malloc_trimmed


def test_local_cluster_workers_start_without_dasks_malloc_trim_threshold_and_with_the_tasks_imported():
    # Dask's default would give the worker MALLOC_TRIM_THRESHOLD_=65536 (Jacobians 1.75x slower).
    with local_cluster(workers=1) as starting, Client(starting.result()) as client:
        seen = client.run(os.environ.get, MALLOC_TRIM_ENV)
        # Before any task: the worker's start imported them. (A lambda travels by value: a function of
        # this module would make the worker import it, and with it flows.mine and the tasks.)
        imported = client.run(lambda: [name for name in WORKER_PRELOAD if name in sys.modules])
    assert list(seen.values()) == [None]
    assert list(imported.values()) == [list(WORKER_PRELOAD)]


def test_a_trimmed_worker_is_told_how_to_fix_it(monkeypatch):
    monkeypatch.setenv(MALLOC_TRIM_ENV, "65536")
    with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_=65536.*pre-spawn-environ"):
        warn_if_malloc_trimmed()
    monkeypatch.delenv(MALLOC_TRIM_ENV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_malloc_trimmed()
