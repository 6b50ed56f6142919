"""Prefect tasks of the evaluation flow, thin wrappers over ``localedit.evaluation.compare``.

Image sets, directions and matches travel between tasks in memory (they are small: a few
dozen 32-px images and h vectors); the model is loaded once per process.
"""

from __future__ import annotations

import copy
import threading

import pandas as pd
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from localedit.bundled.samples import load_samples
from localedit.core.models import DiffusionModel
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import METHODS, Direction, method_directions
from localedit.evaluation.compare import load_probe_or_note, supervised_references
from localedit.evaluation.matching import Match
from localedit.evaluation.metrics import load_lpips
from localedit.evaluation.report import text_table, write_report
from localedit.evaluation.scoring import (
    Scorer,
    match_direction,
    prepare_images,
    score_direction,
    score_edits,
    sweep_direction,
)
from localedit.evaluation.summary import save_results
from localedit.store import catalogue
from localedit.store.runs import RunStore
from tasks.runtime import GPU_TASK_OPTIONS, TASK_OPTIONS, cached_model, jacobian_threads, use_thread_share

_local = threading.local()


def _model(plan: dict) -> DiffusionModel:
    """This thread's own copy of the model: an h-space edit hooks the U-Net, and threads must not share hooks."""
    use_thread_share()
    shared = cached_model(plan["settings"]["model_source"], plan["settings"]["model_fingerprint"])
    if getattr(_local, "fingerprint", None) != shared.fingerprint:
        _local.model, _local.fingerprint = copy.deepcopy(shared), shared.fingerprint
    return _local.model


@task(name="prepare-evaluation", **GPU_TASK_OPTIONS)
def prepare_evaluation(run_dir: str, heldout: int, sources: int, target: float, samples: str) -> dict:
    """Check the model against the catalogue, reconstruct the run's first images and invert the held-out ones."""
    cat = catalogue.open(run_dir)
    attrs = cat.attrs
    model = cached_model(attrs["model_source"], attrs["model_fingerprint"])
    cat.check_model(model)
    use_thread_share()
    store = RunStore(run_dir)
    n_source = min(sources, len(attrs["images"]))
    source = prepare_images(model, torch.stack([store.image(i) for i in range(n_source)]),
                            [str(attrs["images"][i]) for i in range(n_source)], col.SOURCE_SET, attrs["num_steps"],
                            x_T=torch.stack([store.x_T(i) for i in range(n_source)]))
    images, factors = load_samples("heldout", samples)
    if len(images) < heldout:
        raise ValueError(f"asked for {heldout} held-out images; {samples} has {len(images)}")
    held = prepare_images(model, images[:heldout], factors["file"][:heldout].tolist(), col.TRANSFER_SET, attrs["num_steps"])
    perceptual = load_lpips()
    probe, probe_note = load_probe_or_note()
    regions = {name: cat.regions[name] for name in attrs["regions"]}
    settings = {"run_dir": str(run_dir), "model_source": attrs["model_source"], "model_fingerprint": attrs["model_fingerprint"],
                "run_id": attrs["run_id"], "regions": ",".join(attrs["regions"]),
                "chance_locality": {name: round(r.fraction, 3) for name, r in regions.items()}, "source_images": n_source,
                "heldout_images": heldout, "target_change": target, "t": attrs["t"], "k": attrs["k"],
                "num_steps": attrs["num_steps"], "jive": attrs["jive"],
                "complements": attrs["complements"], "lpips_note": perceptual.note, "probe_note": probe_note}
    return {"source": source, "heldout": held, "scorer": Scorer(regions, perceptual, probe, target=target),
            "settings": settings}


def catalogue_methods(complements: bool) -> tuple[str, ...]:
    """The comparison's names for a run's catalogue rows: region variation, region contrast, JIVE individual
    (with or without complements), JIVE joint and joint variation."""
    return ("region_variation", "region_contrast", "jive_complement" if complements else "jive_individual", "jive_joint",
            "joint_variation")


@task(name="reference-directions", **GPU_TASK_OPTIONS)
def reference_task(plan: dict) -> list[Direction]:
    """The supervised references as labelled rows (none unless the model was trained on the bundled generator)."""
    model = _model(plan)
    return supervised_references(model, plan["settings"]["t"], plan["source"].num_steps)


@task(name="catalogue-directions", **TASK_OPTIONS)
def catalogue_directions(run_dir: str, max_rank: int) -> list[Direction]:
    """The catalogue's directions of rank < max_rank; joint ones are scored on every region, like other global edits."""
    cat = catalogue.open(run_dir)
    rows = cat.frame[cat.frame["rank"] < max_rank]
    return [Direction(f"catalogue:{row.id}", row.method, row.region if row.kind == "individual" else None, "h",
                      cat.vector(row.id), int(row.t), None,
                      {"consistency": float(row.consistency), "support": int(row.support), col.LABEL: row.label,
                       col.LABEL_SHARE: float(row.label_share)})
            for row in rows.itertuples()]


@task(name="baseline-directions", task_run_name="baselines-{index}", **GPU_TASK_OPTIONS)
def baseline_directions(plan: dict, index: int) -> list[Direction]:
    """The other methods' directions on source image ``index`` (the run's own come from its catalogue)."""
    model = _model(plan)
    source, settings = plan["source"], plan["settings"]
    store = RunStore(settings["run_dir"])
    # The run's own subspaces at the same latent (regions, then complements: what the baselines need).
    mined = [store.subspace(index, block) for block in store.config.blocks] if settings["complements"] else None
    with jacobian_threads():  # forward AD one thread at a time, with every core while it holds the lock
        found, _ = method_directions(model, None, list(plan["scorer"].regions.values()), source.keys[index],
                                     settings["t"], settings["k"], source.num_steps, seed=index,
                                     x_T=source.x_T[index : index + 1].to(model.device), jive=settings["jive"],
                                     mined=mined)
    provided = catalogue_methods(settings["complements"])
    return [d for d in found if d.method not in provided]


def source_index(plan: dict, direction: Direction) -> list[int]:
    """Images a direction is matched on: its own source image, or all source images for a catalogue direction."""
    keys = plan["source"].keys
    return [keys.index(direction.source)] if direction.source is not None else list(range(len(keys)))


@task(name="match-direction", **GPU_TASK_OPTIONS)
def match_task(plan: dict, direction: Direction) -> dict:
    """Strength matching on the source image(s); returns the match and the source rows."""
    index = source_index(plan, direction)
    match = match_direction(_model(plan), direction, plan["source"], index, plan["scorer"])
    rows = score_edits(direction, plan["source"], index, match.result, (match.alpha, -match.alpha), plan["scorer"], match)
    return {"match": Match(match.alpha, match.change, match.matched, match.evaluations), "rows": rows}


@task(name="score-direction", **GPU_TASK_OPTIONS)
def score_task(plan: dict, direction: Direction, matched: dict, index: list[int]) -> pd.DataFrame:
    """A direction on held-out images ``index`` at the matched +-alpha, edited in one batch."""
    return score_direction(_model(plan), direction, plan["heldout"], index, matched["match"], plan["scorer"])


@task(name="sweep-direction", **GPU_TASK_OPTIONS)
def sweep_task(plan: dict, direction: Direction, matched: dict, index: list[int], strip: str) -> pd.DataFrame:
    """Locality over multiples of alpha on a few held-out images, and the direction's edit strip."""
    return sweep_direction(_model(plan), direction, plan["heldout"], index, matched["match"], plan["scorer"], strip)


@task(name="publish-evaluation", **TASK_OPTIONS)
def publish(run_dir: str, frames: list[pd.DataFrame], settings: dict) -> dict:
    """metrics.parquet, evaluation.json and report.html in the run, and a Prefect summary artifact."""
    expected = [*(METHODS if settings["baselines"] else catalogue_methods(settings["complements"])),
                *settings["reference_methods"]]
    result = save_results(run_dir, pd.concat(frames, ignore_index=True), settings, expected)
    report = write_report(run_dir)
    table = text_table(result["methods"])
    create_markdown_artifact(key="evaluation-summary", description=f"evaluation of {run_dir}", markdown=(
        f"# Direction evaluation\n\nRun `{run_dir}`, model `{settings['model_fingerprint']}`, matched RMS change "
        f"{settings['target_change']}. LPIPS: {settings['lpips_note']}\n\n```\n{table}\n```\n\nReport: `{report}`\n"))
    create_table_artifact(key="evaluation-methods", table=[{"method": name, **{k: v for k, v in m.items()
                          if k.endswith(f"_{col.MEDIAN}")}} for name, m in result["methods"].items()])
    return {**result, "report": str(report)}
