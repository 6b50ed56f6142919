"""Aggregate a run's per-image directions into its catalogue (cheap, so it is rebuilt on every run)."""

from __future__ import annotations

from prefect import task

from localedit import catalogue
from tasks.runtime import TASK_OPTIONS


@task(name="build-catalogue", **TASK_OPTIONS)
def build_catalogue(run_dir: str, threshold: float, min_support: int) -> str:
    """Write ``catalogue.parquet`` and the direction vectors; returns the parquet path."""
    return str(catalogue.build(run_dir, threshold=threshold, min_support=min_support))
