"""What the model-heavy tasks share: their Prefect options, a per-process model cache, their thread share."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import distributed
import torch
from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import as_completed
from tqdm.auto import tqdm

from localedit.core import forward_ad
from localedit.core.models import DiffusionModel, load_model
from localedit.utils.allocator import keep_freed_memory
from localedit.utils.badinput import BAD_INPUT

# Every process that runs the pipeline's tasks imports this module before its task threads exist (the CLI and a
# flow through flows/, a Dask worker through its preload): there, freed tensors stay in the heap for the next ones
# instead of being faulted in afresh, a fifth of a Jacobian's time (localedit.utils.allocator).
keep_freed_memory()

# Cores a process may use: set it for Dask workers that share a machine (our LocalCluster does).
WORKER_CORES_ENV = "LOCALEDIT_WORKER_CORES"
# Concurrent tasks of the in-process runner (default: one per core).
TASK_SLOTS_ENV = "LOCALEDIT_TASK_SLOTS"
# Set by Dask's nanny unless configured away; glibc then maps every tensor over 128 KiB afresh (flows/mine.py).
MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


def machine_cores() -> int:
    """The cores this process may run on (its affinity), whatever share ``LOCALEDIT_WORKER_CORES`` gives it."""
    return len(os.sched_getaffinity(0))


def cores() -> int:
    return int(os.environ.get(WORKER_CORES_ENV) or machine_cores())


def local_slots() -> int:
    return int(os.environ.get(TASK_SLOTS_ENV) or cores())


def use_thread_share() -> int:
    """Give torch this process's cores divided among the tasks that run in it at once."""
    try:
        slots = distributed.get_worker().state.nthreads
    except ValueError:  # not on a Dask worker: the in-process thread pool
        slots = local_slots()
    else:
        warn_if_malloc_trimmed()
    threads = max(1, cores() // slots)
    torch.set_num_threads(threads)
    return threads


def warn_if_malloc_trimmed() -> None:
    """Warn (once per process) when this worker runs with a fixed malloc trim threshold: Jacobians ~1.75x slower."""
    if MALLOC_TRIM_ENV in os.environ:
        warnings.warn(f"this Dask worker runs with {MALLOC_TRIM_ENV}={os.environ[MALLOC_TRIM_ENV]}, which made "
                      "Jacobians ~1.75x slower here; unset it where you start localedit (a LocalCluster's workers "
                      "inherit it) or start your workers with the dask config "
                      f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM_ENV} set to null", RuntimeWarning,
                      stacklevel=2)


@contextmanager
def jacobian_threads(threads: int | None = None) -> Iterator[None]:
    """Hold the process's forward-AD lock with ``threads`` torch threads (default: all of the process's cores),
    then go back to the thread share.

    Only one thread of a process may be inside forward-mode AD (``localedit.core.forward_ad``), so a
    Jacobian task waiting for the lock uses no core: the holder takes them all. Torch's thread
    count is per calling thread (OpenMP), so tasks running beside it keep their own share.
    """
    with forward_ad.exclusive():
        torch.set_num_threads(threads or cores())
        try:
            yield
        finally:
            use_thread_share()


def transient(task, task_run, state) -> bool:
    """Retry crashes and runtime errors (out of memory, I/O), never bad input: it would fail again."""
    try:
        state.result()
    except BAD_INPUT:
        return False
    except Exception:
        return True
    return True


def wait_all(futures, desc: str, progress: bool = True) -> None:
    """Block until every future has finished, with one progress bar for the stage.

    The bar is what the console shows of a stage: per-task records go to Prefect's server and
    UI only (the CLI sets ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=WARNING``). Failures are
    raised later, by the caller's ``.result()``.
    """
    futures = list(futures)  # counted in tasks (one per latent chunk and per image): "task" says so in the rate
    for _ in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="task", disable=not progress):
        pass


# Completion is tracked by the run store's marks, so Prefect's input-hash cache stays off.
TASK_OPTIONS = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=transient, cache_policy=NO_CACHE)
GPU_TAG = "gpu"  # a Prefect concurrency limit on this tag caps model-heavy task runs (deployment.yaml)
GPU_TASK_OPTIONS = dict(TASK_OPTIONS, tags=[GPU_TAG])


def gpu_tag_where_limited(*tasks: Task) -> tuple[Task, ...]:
    """``tasks`` as they are if the Prefect server has a concurrency limit on the ``gpu`` tag, else without the tag.

    Why: before it starts, every tagged task run asks the server for a slot of its tags' limits, and
    Prefect remembers that a tag has none for only 5 s. One process's requests queue behind each other,
    and on a busy machine the SQLite-backed server took ~2 s to answer, so every 5 s all of a process's
    task runs waited ~2 s to start: no task ran for 6-13% of an in-process 64-image run; untagged, in-process
    mining was 1.15x as fast end to end (benchmarks/RESULTS.md, issue 14 eighth round). Asked once per flow run
    instead; a limit created during a run applies from the next.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(GPU_TAG)
        except ObjectNotFound:
            return tuple(t.with_options(tags=set(t.tags) - {GPU_TAG}) for t in tasks)
    return tasks

_lock = threading.Lock()
_cached: dict[str, DiffusionModel] = {}


def cached_model(source: str, fingerprint: str | None = None) -> DiffusionModel:
    """Load ``source`` once per process (tasks on one worker share it); check its fingerprint if given."""
    with _lock:
        if source not in _cached:
            _cached.clear()  # a worker serves one run's model at a time
            _cached[source] = load_model(source)
        model = _cached[source]
    if fingerprint is not None and model.fingerprint != fingerprint:
        raise ValueError(f"model {source!r} now has fingerprint {model.fingerprint}, but the run was started "
                         f"with {fingerprint}; it changed on disk, so start a new run")
    return model
