"""Aggregate a run's per-image directions into its catalogue (rebuilt by every run that mined something or changed
its settings: under a minute on the bundled model, most of it region contrast and the edit readings)."""

from __future__ import annotations

from prefect import task

from localedit.bundled.probe import load_probe
from localedit.bundled.references import reference_directions, trained_on_generator
from localedit.core.settings import EditSettings
from localedit.store import catalogue
from localedit.store.runs import RunStore
from tasks.runtime import TASK_OPTIONS, cached_model, jacobian_threads, machine_cores


@task(name="build-catalogue", **TASK_OPTIONS)
def build_catalogue(run_dir: str, threshold: float, min_support: int, edit: EditSettings, progress: bool = False) -> str:
    """Write ``catalogue.parquet``, the direction vectors and how they are applied (``edit``); returns the parquet path.

    Region-variation rows and probe labels need the run's model; on a model trained on the
    bundled generator, rows are also compared with the supervised references (cached per model).
    """
    config = RunStore(run_dir).config
    model = cached_model(config.model_source, config.model_fingerprint)
    faces = trained_on_generator(model)
    references = reference_directions(model, config.t, config.num_steps) if faces else None
    # The flow's last task, after every mining task has ended: the other workers of a LocalCluster that split
    # the cores are idle, so it takes every core of the machine, not its worker's share (2 single-core workers:
    # the build took 84-94 s on one core against 57-60 s in process; issue 14 ninth round).
    with jacobian_threads(machine_cores()):
        return str(catalogue.build(run_dir, threshold=threshold, min_support=min_support, model=model,
                                   probe=load_probe() if faces else None, references=references, edit=edit,
                                   progress=progress))
