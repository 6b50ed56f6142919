"""The worker environment the Dask runner sets up: glibc's adaptive mmap threshold kept, a warning where it is not;
and the order in which ``run_mining`` starts and stops the cluster and the Prefect server."""

import asyncio
import gc
import os
import signal
import subprocess
import sys
import warnings
from concurrent.futures import Future
from contextlib import contextmanager

import dask
import pytest
import torch
from distributed import Client

import flows.mine
from flows.mine import (
    QUIET_MONITORS,
    WORKER_PRELOAD,
    check_runner,
    check_scheduler,
    local_cluster,
    local_cluster_kwargs,
    run_mining,
)
from tasks.runtime import (
    MALLOC_TRIM_ENV,
    TASK_SLOTS_ENV,
    WORKER_CORES_ENV,
    jacobian_threads,
    machine_cores,
    warn_if_malloc_trimmed,
)


def _worker_state(client: Client) -> tuple[list, list, list]:
    """(MALLOC_TRIM_THRESHOLD_, the preloaded task modules, whether this test module is loaded) per worker, whose
    Dask profiler must be off (it samples every thread's stack with the GIL held) and monitors quiet.

    Lambdas travel by value: a function of this module would make a spawned worker import it, and with
    it flows.mine and the tasks."""
    trim = client.run(os.environ.get, MALLOC_TRIM_ENV)
    imported = client.run(lambda: [name for name in WORKER_PRELOAD if name in sys.modules])
    this_module = client.run(lambda: "tests.test_runtime" in sys.modules)
    assert list(client.run(lambda: dask.config.get("distributed.worker.profile.enabled")).values()) == [False]
    monitors = client.run(lambda keys: [dask.config.get(key) for key in keys], list(QUIET_MONITORS))
    assert list(monitors.values()) == [list(QUIET_MONITORS.values())]
    # a stop is the flow process's to make (tasks/worker_setup.py): Ctrl-C ignored, SIGTERM ends it quietly
    signals = client.run(lambda: [signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)])
    assert list(signals.values()) == [[signal.SIG_IGN, signal.SIG_DFL]]
    return list(trim.values()), list(imported.values()), list(this_module.values())


def test_local_cluster_workers_are_forked_without_dasks_malloc_trim_threshold():
    # Dask's default would give the worker MALLOC_TRIM_THRESHOLD_=65536 (Jacobians 1.75x slower).
    before = dask.config.get("distributed")
    with local_cluster(workers=1) as starting, Client(starting.result()) as client:
        trim, imported, this_module = _worker_state(client)
        assert dask.config.get("distributed.worker.multiprocessing-method") == "fork"
    assert dask.config.get("distributed") == before  # the cluster's settings are undone: another cluster gets Dask's
    assert trim == [None]
    assert imported == [list(WORKER_PRELOAD)]
    assert this_module == [True]  # forked from this process: it has everything this process imported


def test_after_cuda_started_workers_are_spawned_and_import_the_tasks_as_they_start(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # a forked child could not use CUDA
    with local_cluster(workers=1) as starting, Client(starting.result()) as client:
        trim, imported, this_module = _worker_state(client)
    assert trim == [None]
    assert imported == [list(WORKER_PRELOAD)]  # before any task: the worker's preload imported them
    assert this_module == [False]  # a fresh interpreter


@pytest.mark.parametrize("machine, gpu, expected", [
    (2, False, (2, 1)),  # Dask's split: one worker per core up to 4 cores
    (16, False, (4, 4)),
    (16, True, (1, 16)),  # one worker holds the GPU
])
def test_a_local_cluster_splits_the_cores_as_dask_does(monkeypatch, machine, gpu, expected):
    monkeypatch.setenv(WORKER_CORES_ENV, str(machine))
    kwargs = local_cluster_kwargs(gpu=gpu)
    assert (kwargs["n_workers"], kwargs["threads_per_worker"]) == expected
    assert kwargs["env"][WORKER_CORES_ENV] == str(expected[1])
    chosen = local_cluster_kwargs(workers=3)  # an explicit count shares the cores among its workers
    assert (chosen["n_workers"], chosen["threads_per_worker"]) == (3, max(1, machine // 3))


def test_more_workers_than_cores_is_warned_about(monkeypatch):
    # Found by a new user: --workers 8 on 2 cores was accepted silently; its workers take turns on the cores.
    monkeypatch.setenv(WORKER_CORES_ENV, "2")
    with pytest.warns(UserWarning, match=r"--workers 3 on 2 cores: .* take turns .*Dask's split here is 2\)"):
        check_runner("dask", workers=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_runner("dask", workers=2)
        check_runner("dask")


async def _called_inside_a_running_loop(function, *args):
    return function(*args)


def test_a_dask_address_is_checked_for_a_scheduler_that_answers():
    with local_cluster(workers=1) as starting:
        address = starting.result().scheduler_address
        check_scheduler(address)  # raises if it does not answer
        asyncio.run(_called_inside_a_running_loop(check_scheduler, address))  # as in a notebook
        worker = next(iter(starting.result().workers.values())).worker_address
        with pytest.raises(ValueError, match=f"--dask-address {worker}: a Dask Worker answered, not a scheduler"):
            check_scheduler(worker)
    with pytest.raises(ValueError, match=f"--dask-address {address}: no Dask scheduler answered within 1 s"):
        check_scheduler(address, timeout=1)  # the same address once its cluster has closed


@pytest.mark.parametrize("before", [None, "threads"])
@pytest.mark.parametrize("address, says", [("notanaddress", "is not a Dask address such as tcp://host:8786 "
                                                            r"\(missing port number"),
                                           ("127.0.0.1:87x", "is not a Dask address"),
                                           ("http://127.0.0.1:8787", "is not a Dask address .*unknown address scheme"),
                                           ("tcp://127.0.0.1:1", ": no Dask scheduler answered within 1 s")])
def test_probing_a_dask_address_leaves_dasks_scheduler_option_as_it_was(address, says, before):
    # the CI failure of round 11: a probe without a port left scheduler="dask.distributed" in the pytest worker, and a
    # later xarray read in that process raised "Requested dask.distributed scheduler but no Client active"; a failed
    # Client also set it again when garbage collected, hence the collection before the check
    with dask.config.set(scheduler=before):
        with pytest.raises(ValueError, match=f"^--dask-address {address} ?{says}"):
            check_scheduler(address, timeout=1)
        gc.collect()
        assert dask.config.get("scheduler") == before


def test_a_scheduler_check_that_timed_out_says_so_without_an_empty_message(monkeypatch):
    async def silent(address, timeout):  # as a port that accepts and never answers (a dashboard's): no message
        raise TimeoutError()

    monkeypatch.setattr(flows.mine, "_server_kind", silent)
    with pytest.raises(ValueError, match=r"^--dask-address tcp://h:1: no Dask scheduler answered within 1 s "
                                         r"\(TimeoutError\)$"):
        check_scheduler("tcp://h:1", timeout=1)


def test_a_worker_that_never_starts_fails_the_cluster_in_one_line(monkeypatch, tmp_path):
    # as a worker forked while another thread held a lock it needs would (tasks/fork_safety.py)
    hang = tmp_path / "hang_at_start.py"
    hang.write_text("import time\n\ndef dask_setup(worker):\n    time.sleep(3600)\n")
    monkeypatch.setattr(flows.mine, "WORKER_PRELOAD", (str(hang),))
    monkeypatch.setattr(flows.mine, "WORKER_START_SECONDS", 3)
    with local_cluster(workers=1) as starting:
        error = starting.exception(timeout=60)
    assert isinstance(error, RuntimeError)
    assert "did not start" in str(error) and "within 3 s" in str(error) and "\n" not in str(error)


def test_jacobians_keep_a_workers_core_share_and_the_catalogue_build_can_take_the_machine(monkeypatch):
    # a LocalCluster of as many workers as cores: each worker may use one
    monkeypatch.setenv(WORKER_CORES_ENV, "1")
    monkeypatch.setenv(TASK_SLOTS_ENV, "1")
    before = torch.get_num_threads()
    try:
        with jacobian_threads():
            assert torch.get_num_threads() == 1
        with jacobian_threads(machine_cores()):  # as build_catalogue does, once the mining tasks have ended
            assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1  # back to the worker's share
    finally:
        torch.set_num_threads(before)


def test_a_trimmed_worker_is_told_how_to_fix_it(monkeypatch):
    monkeypatch.setenv(MALLOC_TRIM_ENV, "65536")
    with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_=65536.*pre-spawn-environ"):
        warn_if_malloc_trimmed()
    monkeypatch.delenv(MALLOC_TRIM_ENV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_malloc_trimmed()


def test_run_mining_starts_the_cluster_before_the_server_and_closes_it_before_the_server_stops(monkeypatch, tmp_path):
    events = []

    class Cluster:
        scheduler_address = "tcp://127.0.0.1:1"

        def close(self):
            events.append("cluster closed")

    @contextmanager
    def cluster(workers, gpu):
        events.append("cluster starting")
        started = Future()
        started.set_result(Cluster())
        yield started

    @contextmanager
    def server():
        events.append("server started")
        yield "http://127.0.0.1:2/api"
        events.append("server stopped")

    def with_options(task_runner):  # the flow on Dask: records the runner it was given, mines nothing
        events.append(f"flow on {task_runner.address}")
        return lambda **parameters: "mined"

    monkeypatch.setattr(flows.mine, "local_cluster", cluster)
    monkeypatch.setattr(flows.mine, "pipeline_server", server)
    monkeypatch.setattr(flows.mine.mine_directions, "with_options", with_options)
    assert run_mining(runner="dask", out=str(tmp_path / "run"), samples=2) == "mined"
    assert events == ["cluster starting", "server started", "flow on tcp://127.0.0.1:1", "cluster closed",
                      "server stopped"]


@pytest.mark.parametrize("given, expected", [(None, ["1", "False"]), ("0", ["0"])])  # a CI may turn it off too
def test_flows_turn_prefects_client_telemetry_off_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "DO_NOT_TRACK"}
    if given is not None:
        env["DO_NOT_TRACK"] = given
    code = ("import os, flows; from prefect._internal.analytics.enabled import is_telemetry_enabled; "
            "print(os.environ['DO_NOT_TRACK'], is_telemetry_enabled())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[: len(expected)] == expected, done.stderr
