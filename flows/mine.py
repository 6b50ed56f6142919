"""Mine a catalogue of local editing directions from many images.

images (a folder, the bundled samples, or N samples from the model) x regions -> invert every
image to the editing timestep t (one task per chunk of images, one batch through the U-Net) ->
the subspaces of every region and complement of an image, then their JIVE split (one task per
image, one linearisation; the tasks running at once compute side by side) -> consensus
across images -> catalogue. Everything lands in
one run directory (see ``localedit.store.runs``); rerunning on it resumes.

Tasks run in this process by default (a thread pool, one slot per core); ``run_mining(...,
runner="dask")`` sends them to a ``dask.distributed`` cluster instead, a local one or the one at
``dask_address``. With ``gpu=True``, model-heavy tasks ask Dask for a ``GPU`` worker resource.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dask
from distributed.deploy.utils import nprocesses_nthreads
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.local_server import pipeline_server
from flows.stopping import stoppable
from localedit.core.settings import CatalogueSettings, EditSettings, MiningSettings, jive_params
from localedit.store.catalogue import CATALOGUE_NAME
from localedit.store.catalogue import is_current as catalogue_is_current
from localedit.store.runs import RunStore, run_lock
from tasks.catalogue import build_catalogue
from tasks.fork_safety import renew_console_locks_after_fork
from tasks.mine import NOTHING, StageCount, invert_images, latent_chunks, subspaces_and_split
from tasks.prepare import plan_run, prepare_run
from tasks.runtime import MALLOC_TRIM_ENV, WORKER_CORES_ENV, cores, gpu_tag_where_limited, local_slots, wait_all

RUNNERS = ("local", "dask")
MINING = MiningSettings()  # the flow's parameter defaults
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"  # read by OpenMP when torch loads: set in a worker's environment
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
# threshold at 128 KiB: every activation tensor is then mapped, zeroed and unmapped, and a worker's
# Jacobian took 1.75x the CPU seconds of the same call in process (benchmarks/RESULTS.md). None
# unsets it for the workers our LocalClusters start (a cluster at --dask-address needs the same), so that
# their preload sets malloc to keep freed memory (tasks.runtime, localedit.utils.allocator).
WORKER_PRE_SPAWN_ENVIRON = {f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM_ENV}": None}
WORKER_PRELOAD = ("tasks.mine", "tasks.catalogue")  # the modules of the tasks this flow submits
# Our LocalCluster's workers also leave a stop to the flow's process and keep quiet while closing: a cluster at
# --dask-address keeps its own signal handling and messages.
CLUSTER_WORKER_SETUP = "tasks.worker_setup"
MULTIPROCESSING_METHOD = "distributed.worker.multiprocessing-method"
# Dask's statistical profiler samples every worker thread's stack every 10 ms, holding the GIL that the
# tasks' autograd code needs: off, six subspace tasks on a worker took 7% less CPU and 8-14% less wall
# time (benchmarks/RESULTS.md, issue 14 seventh round). Our LocalCluster has no dashboard to show it.
WORKER_PROFILER = {"distributed.worker.profile.enabled": False}
# Dask's monitors for dashboards and unresponsive event loops wake the scheduler, the nannies and every worker many
# times a second: an idle 2-worker cluster took 0.051 cores, 0.013 with these intervals (benchmarks/RESULTS.md,
# issue 14 tenth round), CPU that a busy machine's torch threads wait for. Memory limits are checked once a second.
QUIET_MONITORS = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s",
                  "distributed.worker.memory.monitor-interval": "1s"}
# How long ``--dask-address`` may take to answer before the run is refused (Dask's own default is 30 s).
SCHEDULER_CONNECT_SECONDS = 10
# A worker not up by then fails the run instead of leaving it waiting for good. A forked worker starts in
# ~0.2 s and a spawned one in ~13 s on 2 busy cores; one forked while a parent thread held a console lock
# hung forever (tasks/fork_safety.py).
WORKER_START_SECONDS = 120


@dataclass(frozen=True)
class MiningResult:
    """What a mining flow run did: where its run and catalogue are, and per stage what its tasks computed."""

    run_dir: str
    run_id: str
    flow_run_id: str
    catalogue: str
    tasks: dict[str, StageCount]  # "latent", "subspace", "split"
    task_seconds: float  # computing inside the mining tasks, summed over tasks (none when all was resumed)
    catalogue_seconds: float  # building the catalogue, or checking that it is up to date
    catalogue_kept: bool  # a resumed run that mined nothing new kept its catalogue (``catalogue.is_current``)
    wall_seconds: float

    def counts_text(self) -> str:
        """``latent 24 computed/0 skipped, ...``: one line for logs and the console."""
        return ", ".join(f"{stage} {c.computed} computed/{c.skipped} skipped" for stage, c in self.tasks.items())


@flow(name="mine-directions", task_runner=ThreadPoolTaskRunner(max_workers=local_slots()))
@stoppable  # a signal stops the run within seconds
def mine_directions(
    out: str,
    model: str = "bundled",
    images: str | None = None,
    samples: int | None = None,
    seed: int = MINING.seed,
    regions: str = MINING.regions,
    t: int = MINING.t,
    k: int = MINING.k,
    num_steps: int = MINING.num_steps,
    joint_rank: int | None = MINING.jive["joint_rank"],
    individual_rank: int | None = MINING.jive["individual_ranks"],
    max_angle_deg: float = MINING.jive["max_angle_deg"],
    complements: bool = MINING.complements,
    precision: str = MINING.precision,
    threshold: float = CatalogueSettings.threshold,
    min_support: int = CatalogueSettings.min_support,
    edit_schedule: str = EditSettings.schedule,
    t_edit: int = EditSettings.t_edit,
    gpu: bool = False,
    progress: bool = True,
) -> MiningResult:
    """Mine joint and individual h-space directions of ``regions`` over many images into a catalogue.

    Defaults: ``localedit.core.settings`` (``MiningSettings``, ``CatalogueSettings``, ``EditSettings``).

    Args:
        out: run directory; strftime codes are expanded at the start (``out/weekly/%Y-%m-%d``; ``%%`` for a
            literal ``%``).
            An existing run there is resumed if its settings match, refused otherwise.
        model: "bundled", a local diffusers folder, or a Hugging Face hub id.
        images: a folder of images at the model's resolution, or "bundled" (the bundled mining subset).
        samples: instead of images, this many images sampled from the model (seeded by ``seed``).
        regions: comma-separated preset names (eyes, mouth, hair, left_eye, right_eye) or a regions JSON file.
        t: editing timestep (rounded to the DDIM grid); k: subspace size per region.
        num_steps: DDIM steps for inversion and sampling.
        joint_rank, individual_rank, max_angle_deg: JIVE settings (ranks None = chosen from the angles).
        complements: our extension: each region's complement is one more subspace, and individual
            directions leave out what a region shares with it (more local edits); False: the paper's JIVE.
        precision: of the Jacobian products, "fp32", "bf16" or "fp16" (reduced: for GPU workers' tensor cores;
            bf16 cost <= 0.9 degrees of subspace angle on the bundled model, benchmarks/RESULTS.md).
        threshold, min_support: a catalogue direction must lie within squared cosine ``threshold``
            of the subspaces of at least ``min_support`` images.
        edit_schedule, t_edit: how the catalogue's directions are applied (stored with it): on every
            reverse step ("all") or while t >= t_edit ("from_t_edit").
        gpu: ask Dask for a ``GPU`` worker resource for the model-heavy tasks.
        progress: show a progress bar while the tasks run.
    """
    parameters = dict(locals())  # first statement: exactly the flow's parameters
    start = time.perf_counter()
    edit = EditSettings(edit_schedule, t_edit)  # an unknown schedule fails before anything is written
    run = prepare_run(**preparation(parameters))
    with run_lock(run["run_dir"]):  # one run writes a folder at a time
        RunStore(run["run_dir"]).discard_partials()
        return _mine(run, threshold, min_support, edit, gpu, progress, start)


def mining_parameters(settings: MiningSettings) -> dict:
    """The flow's parameters that say what ``settings`` say (``localedit run`` mines ``BUNDLED_RUN`` this way)."""
    return {"regions": settings.regions, "t": settings.t, "k": settings.k, "num_steps": settings.num_steps,
            "seed": settings.seed, "complements": settings.complements, "precision": settings.precision,
            "joint_rank": settings.jive["joint_rank"],
            "individual_rank": settings.jive["individual_ranks"], "max_angle_deg": settings.jive["max_angle_deg"]}


def preparation(parameters: dict) -> dict:
    """The ``plan_run``/``prepare_run`` arguments of a mining run's parameters, the flow's defaults filled in."""
    bound = inspect.signature(mine_directions.fn).bind(**parameters)
    bound.apply_defaults()
    p = bound.arguments
    # The settings plan_run does not see are checked here too: ``localedit mine`` calls this before Prefect
    # starts, so they fail in one line instead of after the mining.
    EditSettings(p["edit_schedule"], p["t_edit"])
    CatalogueSettings(p["threshold"], p["min_support"])
    return {"out": expand_out(p["out"]), "model": p["model"], "images": p["images"],
            "samples": p["samples"], "seed": p["seed"], "regions": p["regions"], "t": p["t"], "k": p["k"],
            "num_steps": p["num_steps"], "complements": p["complements"], "precision": p["precision"],
            "t_edit": p["t_edit"] if p["edit_schedule"] == "from_t_edit" else None,
            "jive": jive_params(joint_rank=p["joint_rank"], individual_ranks=p["individual_rank"],
                                max_angle_deg=p["max_angle_deg"])}


def expand_out(template: str) -> str:
    """``out`` with its strftime codes expanded now; ValueError for a code strftime does not know (it would
    stay in the folder name literally, and every scheduled run would share that folder)."""
    now = datetime.now()
    unknown = sorted({code for code in re.findall(r"%(.)", template.replace("%%", ""))
                      if now.strftime(f"%{code}") == f"%{code}"})
    if unknown:
        raise ValueError(f"--out {template!r}: unknown date code(s) {', '.join('%' + c for c in unknown)} "
                         "(strftime codes such as %Y-%m-%d; %% for a literal %)")
    return now.strftime(template)


def model_resources(gpu: bool):
    """The context in which model-heavy tasks are submitted: with ``gpu``, they ask Dask for a ``GPU`` worker."""
    return dask.annotate(resources={"GPU": 1}) if gpu else nullcontext()


def _mine(run: dict, threshold: float, min_support: int, edit: EditSettings, gpu: bool, progress: bool,
          start: float) -> MiningResult:
    """The flow's task graph over a prepared run (its lock held)."""
    run_dir, n = run["run_dir"], run["images"]
    invert, per_image = gpu_tag_where_limited(invert_images, subspaces_and_split)
    # Submitted stage by stage: a task waiting for its upstream holds a worker thread, so
    # interleaving the stages per image would fill every slot with waiting tasks.
    with model_resources(gpu):
        chunks = {chunk: invert.submit(run_dir, *chunk) for chunk in latent_chunks(n)}
        latents = {i: future for (start, stop), future in chunks.items() for i in range(start, stop)}
        images = {i: per_image.submit(run_dir, i, wait_for=[latents[i]]) for i in range(n)}
    wait_all([*chunks.values(), *images.values()], "mining", progress)
    counts = dict.fromkeys(("latent", "subspace", "split"), NOTHING)
    for future in chunks.values():  # .result() raises the first failure
        counts["latent"] += future.result()
    for future in images.values():
        for stage, count in future.result().items():
            counts[stage] += count
    built = time.perf_counter()
    kept = not any(count.computed for count in counts.values()) and catalogue_is_current(run_dir, threshold,
                                                                                           min_support, edit)
    if kept:
        catalogue = str(Path(run_dir) / CATALOGUE_NAME)
        get_run_logger().info(f"{catalogue} is up to date (nothing new mined, same settings): kept")
    else:
        # A task like the others, so on Dask it runs on a worker (a GPU one with ``gpu``), which holds
        # the model and its warmed-up memory, with every core of that worker: built in the flow's own
        # process beside a cluster, the same build took 1.06-1.22x as long (benchmarks/RESULTS.md, issue 14 fourth
        # round).
        with model_resources(gpu):
            catalogue = build_catalogue.submit(run_dir, threshold, min_support, edit, progress).result()
    built = time.perf_counter() - built
    result = MiningResult(run_dir, run["run_id"], str(flow_run.id), catalogue, counts,
                          sum(c.seconds for c in counts.values()), built, kept, time.perf_counter() - start)
    get_run_logger().info(f"mined {n} images x {len(run['regions'])} regions into {catalogue}: {result.counts_text()}")
    return result


def check_runner(runner: str = "local", dask_address: str | None = None, workers: int | None = None) -> None:
    """ValueError, in one line, for a runner this flow cannot use."""
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; use one of {RUNNERS}")
    if workers is not None and workers < 1:  # a LocalCluster of none restarts its worker forever
        raise ValueError(f"--workers must be at least 1; got {workers}")
    if runner == "local" and dask_address:
        raise ValueError("--dask-address needs --runner dask")
    if workers is not None and (runner == "local" or dask_address):
        where = "--runner local runs in this process" if runner == "local" else "--dask-address has its own"
        raise ValueError(f"--workers sizes the LocalCluster of --runner dask; {where}")
    if workers is not None and workers > cores():
        warnings.warn(f"--workers {workers} on {cores()} cores: each worker computes on a thread of its own, so "
                      f"they take turns on the cores, each slower (Dask's split here is {default_workers()})",
                      stacklevel=2)


def check_scheduler(address: str, timeout: float = SCHEDULER_CONNECT_SECONDS) -> None:
    """ValueError, in one line, unless ``address`` is a Dask address (``distributed.comm.get_address_host_port``)
    where a Dask scheduler answers within ``timeout`` seconds.

    Checked before the run store is created: otherwise a wrong address failed inside the flow, after the
    store was made, with Prefect's traceback of the connection error. The check asks the address who it is (the
    ``identity`` call every Dask server answers, over ``distributed.core.rpc``) in an event loop of its own thread,
    so it works under a running loop (a notebook) too. It is not a ``distributed.Client``: a client sets Dask's
    global ``scheduler`` option when it is made, and one that failed to connect set it back whenever it was garbage
    collected, so later Dask computations in this process (xarray reads of a run store) failed with "no Client
    active".
    """
    from distributed.comm import get_address_host_port

    try:  # the form first: a malformed address is not one that did not answer
        get_address_host_port(address)
    except ValueError as error:
        raise ValueError(f"--dask-address {address} is not a Dask address such as tcp://host:8786 ({error})") from None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="scheduler-check") as pool:
            kind = pool.submit(asyncio.run, _server_kind(address, timeout)).result()
    except Exception as error:
        why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__  # a timeout says nothing
        raise ValueError(f"--dask-address {address}: no Dask scheduler answered within {timeout:g} s "
                         f"({why})") from error
    if kind != "Scheduler":
        raise ValueError(f"--dask-address {address}: a Dask {kind} answered, not a scheduler; give the scheduler's "
                         f"address")


async def _server_kind(address: str, timeout: float) -> str:
    """What the Dask server at ``address`` says it is ("Scheduler", "Worker", "Nanny")."""
    from distributed.core import rpc

    async with rpc(address, timeout=timeout) as server:
        return (await asyncio.wait_for(server.identity(), timeout))["type"]


def default_workers() -> int:
    """Worker processes of a CPU LocalCluster: Dask's own split of this machine's cores (``nprocesses_nthreads``)."""
    return nprocesses_nthreads(cores())[0]


def local_cluster_kwargs(workers: int | None = None, gpu: bool = False) -> dict:
    """``distributed.LocalCluster`` arguments for ``workers`` processes sharing this machine's cores.

    By default the cores are split as Dask's own ``LocalCluster`` splits them (one worker per core up to
    4 cores; 16 cores: 4 workers of 4), and with ``gpu`` one worker holds the GPU. On this 2-core machine two
    1-core workers mined as fast as the in-process runner (1.00), one 2-thread worker at 0.92
    (benchmarks/RESULTS.md, issue 14 tenth round). Each worker runs one task per core, side by side on one
    torch thread each, as the in-process runner does: two 1-thread Jacobians do twice the work of
    one, a 2-thread Jacobian 1.41x (benchmarks/RESULTS.md), and the tasks of one worker share its
    model. Its OpenMP threads sleep at barriers instead of spinning: on a machine whose cores are
    also busy with other work, spinning threads that wait for a descheduled one made a 2-thread
    Jacobian ~4x slower than a 1-thread one (a forked worker keeps this process's policy, which
    importing ``localedit`` set). A spawned worker imports the tasks' modules (torch, diffusers,
    Prefect) as it starts, not at its first task.
    """
    machine = cores()
    n = workers or (1 if gpu else default_workers())
    share = max(1, machine // n)
    env = {WORKER_CORES_ENV: str(share), OMP_WAIT_POLICY: os.environ.get(OMP_WAIT_POLICY, "PASSIVE")}
    return {"n_workers": n, "threads_per_worker": share, "processes": True, "host": "127.0.0.1",
            "dashboard_address": None, "env": env, "resources": {"GPU": 1} if gpu else None,
            "preload": [*WORKER_PRELOAD, CLUSTER_WORKER_SETUP], "death_timeout": WORKER_START_SECONDS}


def start_local_cluster(**kwargs):
    """``distributed.LocalCluster(**kwargs)``; RuntimeError, in one line, if it does not start (Dask's own error
    for a worker that missed its start deadline is a bare ``AssertionError: Status.starting``)."""
    from distributed import LocalCluster

    try:
        return LocalCluster(**kwargs)
    except Exception as error:
        raise RuntimeError(f"the Dask LocalCluster did not start ({type(error).__name__}: {error}); a worker "
                           f"that is not up within {kwargs.get('death_timeout')} s counts as failed") from error


@contextmanager
def local_cluster(workers: int | None = None, gpu: bool = False) -> Iterator[Future]:
    """A ``LocalCluster`` starting in a background thread; yields the future of it and closes it on leaving.

    Its workers are forked from this process, which has imported torch, diffusers and Prefect
    already: a worker started in 0.2 s, against 12.8 s for a spawned one that imports them again
    (benchmarks/RESULTS.md, issue 14 seventh round). Not once this process has initialised CUDA,
    which a forked child cannot use: then they are spawned (Dask's default), in the background
    while the Prefect server starts. These Dask settings (and no trim threshold, no profiler, quiet monitors) hold
    while the cluster lives, for its nanny's (re)starts, and are undone after, so other clusters of this process get
    Dask's.
    """
    import torch

    method = "spawn" if torch.cuda.is_initialized() else "fork"
    if method == "fork":
        renew_console_locks_after_fork()
    settings = {**WORKER_PRE_SPAWN_ENVIRON, **WORKER_PROFILER, **QUIET_MONITORS, MULTIPROCESSING_METHOD: method}
    with dask.config.set(settings), ThreadPoolExecutor(1, thread_name_prefix="local-cluster") as pool:
        starting = pool.submit(start_local_cluster, **local_cluster_kwargs(workers, gpu))
        try:
            yield starting
        finally:
            close_cluster(starting)


def close_cluster(starting: Future) -> None:
    """Close the cluster of ``local_cluster``'s future once it has started (again: nothing); one that failed to
    start has nothing to close. The flow's task runner closes only its client."""
    if starting.exception() is None:
        starting.result().close()


def run_mining(runner: str = "local", dask_address: str | None = None, workers: int | None = None,
               **parameters) -> MiningResult:
    """Run ``mine_directions`` on the chosen task runner (the entry point of ``localedit mine``).

    runner: "local" (tasks in this process) or "dask": on the cluster at ``dask_address``, else on a
    ``LocalCluster`` of ``workers`` processes (``local_cluster_kwargs``) that lives as long as this call.
    """
    check_runner(runner, dask_address, workers)
    plan_run(**preparation(parameters))  # bad input fails here, in one line, before Prefect starts anything
    if dask_address:
        check_scheduler(dask_address)
    with ExitStack() as stack:
        cluster = None
        if runner == "dask" and not dask_address:
            cluster = stack.enter_context(local_cluster(workers, parameters.get("gpu", False)))
        stack.enter_context(pipeline_server())
        if cluster is not None:
            # Closed before the server stops: stopping workers send their last task-run logs to it. With the
            # server gone first, closing took 3.3-3.6 s instead of 1.9 s, and a busy machine's worker was
            # killed after 4 s (benchmarks/RESULTS.md, issue 14 seventh round).
            stack.callback(close_cluster, cluster)
        flow_ = mine_directions
        if runner == "dask":
            from prefect_dask import DaskTaskRunner

            address = dask_address or cluster.result().scheduler_address
            flow_ = mine_directions.with_options(task_runner=DaskTaskRunner(address=address))
        return flow_(**parameters)
