"""Prefect tasks of the evaluation flow, thin wrappers over ``localedit.evaluation``.

What is scored where is the plan's (``localedit.evaluation.plan``, shared with the in-process
comparison): the tasks execute its assignments. Image sets, directions and matches travel
between tasks in memory (they are small: a few dozen 32-px images and h vectors); the model is
loaded once per process.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import pandas as pd
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from localedit.bundled.samples import load_samples
from localedit.core.models import DiffusionModel
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import Direction, method_directions
from localedit.evaluation.compare import load_probe_or_note, supervised_references
from localedit.evaluation.matching import Match
from localedit.evaluation.metrics import load_lpips
from localedit.evaluation.plan import Assignment, EvaluationResult, catalogue_methods
from localedit.evaluation.report import text_table, write_report
from localedit.evaluation.scoring import (
    ALPHA_HINT,
    ImageSet,
    Scorer,
    match_direction,
    prepare_images,
    score_direction,
    score_edits,
)
from localedit.evaluation.settings import EvaluationSettings
from localedit.evaluation.summary import save_results
from localedit.store import catalogue
from localedit.store.runs import RunStore
from tasks.runtime import GPU_TASK_OPTIONS, TASK_OPTIONS, cached_model, jacobian_threads, use_thread_share

_local = threading.local()


@dataclass
class PreparedRun:
    """What every evaluation task shares: the run's settings, its reconstructed source images, the inverted
    held-out images, the scorer (with the catalogue's edit settings) and what evaluation.json records."""

    run_dir: str
    model_source: str
    model_fingerprint: str
    t: int
    k: int
    jive: dict
    complements: bool
    source: ImageSet
    heldout: ImageSet
    scorer: Scorer
    record: dict


@dataclass
class Matched:
    """A direction's matched strength and its rows on the images it was matched on."""

    match: Match
    rows: pd.DataFrame


def _model(run: PreparedRun) -> DiffusionModel:
    """This thread's own copy of the model: an h-space edit hooks the U-Net, and threads must not share hooks."""
    use_thread_share()
    shared = cached_model(run.model_source, run.model_fingerprint)
    if getattr(_local, "fingerprint", None) != shared.fingerprint:
        _local.model, _local.fingerprint = copy.deepcopy(shared), shared.fingerprint
    return _local.model


def check_inputs(run_dir: str, settings: EvaluationSettings,
                 samples: str) -> tuple[catalogue.Catalogue, torch.Tensor, pd.DataFrame]:
    """Raise (one line) when the run has no catalogue or fewer images than ``settings.n_source``, or ``samples``
    fewer held-out images than ``settings.n_heldout``; ``localedit evaluate`` calls it before Prefect starts.
    Returns what it read: the run's catalogue, and the held-out images (n, 3, H, W) in [0, 1] and factor rows."""
    cat = catalogue.open(run_dir)  # FileNotFoundError: no catalogue, says what to run
    images = len(cat.attrs["images"])
    if settings.n_source > images:
        raise ValueError(f"--sources {settings.n_source}: the run {run_dir} has {images} images")
    heldout, factors = load_samples("heldout", samples)
    if settings.n_heldout > len(heldout):
        raise ValueError(f"--heldout {settings.n_heldout}: {samples} has {len(heldout)} held-out images")
    return cat, heldout, factors


@task(name="prepare-evaluation", **GPU_TASK_OPTIONS)
def prepare_evaluation(run_dir: str, settings: EvaluationSettings, samples: str) -> PreparedRun:
    """Check the inputs and the model against the catalogue, reconstruct the run's first images and invert the
    held-out ones."""
    cat, images, factors = check_inputs(run_dir, settings, samples)
    attrs = cat.attrs
    model = cached_model(attrs["model_source"], attrs["model_fingerprint"])
    cat.check_model(model)
    use_thread_share()
    store = RunStore(run_dir)
    n_source = settings.n_source
    source = prepare_images(model, torch.stack([store.image(i) for i in range(n_source)]),
                            [str(attrs["images"][i]) for i in range(n_source)], col.SOURCE_SET, attrs["num_steps"],
                            x_T=torch.stack([store.x_T(i) for i in range(n_source)]))
    heldout = settings.n_heldout
    held = prepare_images(model, images[:heldout], factors["file"][:heldout].tolist(), col.TRANSFER_SET, attrs["num_steps"])
    perceptual = load_lpips()
    probe, probe_note = load_probe_or_note()
    regions = {name: cat.regions[name] for name in attrs["regions"]}
    record = {"run_dir": str(run_dir), "model_source": attrs["model_source"], "model_fingerprint": attrs["model_fingerprint"],
              "run_id": attrs["run_id"], "regions": ",".join(attrs["regions"]),
              "chance_locality": {name: round(r.fraction, 3) for name, r in regions.items()}, "source_images": n_source,
              "heldout_images": heldout, "target_change": settings.target, "t": attrs["t"], "k": attrs["k"],
              "num_steps": attrs["num_steps"], "jive": attrs["jive"], "complements": attrs["complements"],
              "edit": cat.edit.to_attrs(), "lpips_note": perceptual.note, "probe_note": probe_note}
    return PreparedRun(str(run_dir), attrs["model_source"], attrs["model_fingerprint"], attrs["t"], attrs["k"],
                       attrs["jive"], attrs["complements"], source, held,
                       Scorer(regions, perceptual, probe, edit=cat.edit, target=settings.target), record)


@task(name="reference-directions", **GPU_TASK_OPTIONS)
def reference_task(run: PreparedRun) -> list[Direction]:
    """The supervised references as labelled rows (none unless the model was trained on the bundled generator)."""
    return supervised_references(_model(run), run.t, run.source.num_steps)


@task(name="catalogue-directions", **TASK_OPTIONS)
def catalogue_directions(run_dir: str, max_rank: int) -> list[Direction]:
    """The catalogue's directions of rank < max_rank; joint ones are scored on every region, like other global edits."""
    cat = catalogue.open(run_dir)
    rows = cat.frame[cat.frame["rank"] < max_rank]
    return [Direction(f"catalogue:{row.id}", row.method, row.region if row.kind == "individual" else None, "h",
                      cat.vector(row.id), int(row.t), None,
                      {"consistency": float(row.consistency), "support": int(row.support), col.LABEL: row.label,
                       col.LABEL_SHARE: float(row.label_share), ALPHA_HINT: float(row.edit_alpha)})
            for row in rows.itertuples()]


@task(name="baseline-directions", task_run_name="baselines-{index}", **GPU_TASK_OPTIONS)
def baseline_directions(run: PreparedRun, index: int) -> list[Direction]:
    """The other methods' directions on source image ``index`` (the run's own come from its catalogue)."""
    model = _model(run)
    store = RunStore(run.run_dir)
    # The run's own subspaces at the same latent (regions, then complements: what the baselines need).
    mined = [store.subspace(index, block) for block in store.config.blocks] if run.complements else None
    with jacobian_threads():  # forward AD one thread at a time, with every core while it holds the lock
        found, _ = method_directions(model, None, list(run.scorer.regions.values()), run.source.keys[index],
                                     run.t, run.k, run.source.num_steps, seed=index,
                                     x_T=run.source.x_T[index : index + 1].to(model.device), jive=run.jive,
                                     mined=mined)
    provided = catalogue_methods(run.complements)
    return [d for d in found if d.method not in provided]


@task(name="match-direction", **GPU_TASK_OPTIONS)
def match_task(run: PreparedRun, assignment: Assignment) -> Matched:
    """Strength matching on the assignment's source image(s); returns the match and the source rows."""
    d, index = assignment.direction, assignment.match_on
    match = match_direction(_model(run), d, run.source, index, run.scorer)
    rows = score_edits(d, run.source, index, match.result, (match.alpha, -match.alpha), run.scorer, match)
    return Matched(Match(match.alpha, match.change, match.matched, match.evaluations), rows)


@task(name="score-direction", **GPU_TASK_OPTIONS)
def score_task(run: PreparedRun, assignment: Assignment, matched: Matched) -> pd.DataFrame:
    """A direction on its held-out images at the matched +-alpha, edited in one batch; on the first
    ``assignment.sweep`` of them also over multiples of alpha, with the direction's edit strip."""
    return score_direction(_model(run), assignment.direction, run.heldout, assignment.score_on, matched.match,
                           run.scorer, assignment.sweep, assignment.strip)


@task(name="publish-evaluation", **TASK_OPTIONS)
def publish(run_dir: str, frames: list[pd.DataFrame], settings: dict, expected: list[str]) -> EvaluationResult:
    """metrics.parquet, evaluation.json and report.html in the run, and a Prefect summary artifact."""
    result = save_results(run_dir, pd.concat(frames, ignore_index=True), settings, expected)
    report = write_report(run_dir)
    table = text_table(result["methods"])
    create_markdown_artifact(key="evaluation-summary", description=f"evaluation of {run_dir}", markdown=(
        f"# Direction evaluation\n\nRun `{run_dir}`, model `{settings['model_fingerprint']}`, matched RMS change "
        f"{settings['target_change']}. LPIPS: {settings['lpips_note']}\n\n```\n{table}\n```\n\nReport: `{report}`\n"))
    create_table_artifact(key="evaluation-methods", table=[{"method": name, **{k: v for k, v in m.items()
                          if k.endswith(f"_{col.MEDIAN}")}} for name, m in result["methods"].items()])
    return EvaluationResult.from_summary(result, report)
