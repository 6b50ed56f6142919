"""The worker environment the Dask runner sets up: glibc's adaptive mmap threshold kept, a warning where it is not."""

import os
import warnings

import pytest
from distributed import Client, LocalCluster

from flows.mine import task_runner
from tasks.runtime import MALLOC_TRIM_ENV, warn_if_malloc_trimmed


def test_local_cluster_workers_start_without_dasks_malloc_trim_threshold():
    # Dask's default would give the worker MALLOC_TRIM_THRESHOLD_=65536 (Jacobians 1.75x slower).
    runner = task_runner("dask", workers=1)
    with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        seen = client.run(os.environ.get, MALLOC_TRIM_ENV)
    assert list(seen.values()) == [None]


def test_a_trimmed_worker_is_told_how_to_fix_it(monkeypatch):
    monkeypatch.setenv(MALLOC_TRIM_ENV, "65536")
    with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_=65536.*pre-spawn-environ"):
        warn_if_malloc_trimmed()
    monkeypatch.delenv(MALLOC_TRIM_ENV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_malloc_trimmed()
