"""One evaluation plan: which directions are matched on which images, scored on which, swept and stripped on which.

The in-process comparison (``localedit.evaluation.compare``) and the evaluation flow
(``flows/evaluate.py``) both build their plan with ``plan_evaluation`` and execute it, the
first in a loop (``execute``), the second as Prefect tasks, so the two cannot drift apart in
what they score where. The rule: a direction found on source image i (a baseline mined on it)
is matched on image i and transferred to held-out images i, i + M, i + 2M, ... (M source
images), so every method is scored on every held-out image exactly once whatever M is; a
direction found on many images at once (a catalogue row, region variation, a supervised
reference) is matched on every source image and transferred to every held-out image. The
first source's directions and the shared ones also get an alpha sweep, and a strip, on the
first ``strip_images`` of their held-out images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from localedit.bundled.references import REFERENCE_PREFIX
from localedit.core.models import DiffusionModel
from localedit.evaluation.baselines import CATALOGUE_FAMILIES, METHODS, Direction
from localedit.evaluation.layout import discard_staged_strips, strip_path
from localedit.evaluation.scoring import ImageSet, Scorer, evaluate_direction
from localedit.evaluation.settings import EvaluationSettings


@dataclass(frozen=True)
class Assignment:
    """Where one direction is evaluated: image indices into the plan's source and held-out sets."""

    direction: Direction
    match_on: tuple[int, ...]
    score_on: tuple[int, ...]
    sweep: int = 0  # the first ``sweep`` images of ``score_on`` also get the alpha sweep
    strip: Path | None = None


@dataclass(frozen=True)
class EvaluationPlan:
    """Every direction's ``Assignment``, with the settings they are evaluated under and the methods the summary
    lists even when none of their directions was found. How a direction is applied travels with the scorer
    (``Scorer.edit``), which both paths build from the run's catalogue."""

    settings: EvaluationSettings
    assignments: tuple[Assignment, ...]
    expected_methods: tuple[str, ...]


def catalogue_methods(complements: bool) -> tuple[str, ...]:
    """The comparison's names for a run's catalogue rows: region variation, region contrast, JIVE individual
    (with or without complements), JIVE joint and joint variation."""
    left_out = "jive_individual" if complements else "jive_complement"
    return tuple(method for method in CATALOGUE_FAMILIES if method != left_out)


def expected_methods(directions: Sequence[Direction], baselines: bool = True,
                     complements: bool | None = None) -> tuple[str, ...]:
    """Every method (or, without ``baselines``, a run's own catalogue methods) and the supervised references."""
    methods = METHODS if baselines else catalogue_methods(bool(complements))
    references = dict.fromkeys(d.method for d in directions if d.method.startswith(REFERENCE_PREFIX))
    return (*methods, *references)


def plan_evaluation(directions: Sequence[Direction], source_keys: Sequence[str], n_heldout: int,
                    settings: EvaluationSettings = EvaluationSettings(), out_dir: str | Path | None = None, expected: Sequence[str] = ()) -> EvaluationPlan:
    """The plan for ``directions`` (a ``Direction.source`` of None: found on many images) over the source
    images ``source_keys`` and ``n_heldout`` held-out images (the rule: the module docstring); strips are
    staged under ``out_dir`` when given (what a stopped evaluation staged there is discarded) and published
    with the metrics (``summary.save_results``)."""
    if out_dir is not None:
        discard_staged_strips(out_dir)
    n_source = len(source_keys)
    assignments = []
    for d in directions:
        if d.source is None:
            own, match_on, score_on = 0, tuple(range(n_source)), tuple(range(n_heldout))
        else:
            own = source_keys.index(d.source)
            match_on, score_on = (own,), tuple(range(own, n_heldout, n_source))
        sweep = min(settings.strip_images, len(score_on)) if own == 0 else 0
        strip = strip_path(out_dir, d.id, staged=True) if sweep and out_dir is not None else None
        assignments.append(Assignment(d, match_on, score_on, sweep, strip))
    return EvaluationPlan(settings, tuple(assignments), tuple(expected))


def execute(model: DiffusionModel, plan: EvaluationPlan, source: ImageSet, heldout: ImageSet, scorer: Scorer,
            progress: bool = False) -> pd.DataFrame:
    """Every assignment in this process, one after another: metric rows (the flow runs the same as tasks)."""
    rows = [evaluate_direction(model, a.direction, scorer, (source, a.match_on), (heldout, a.score_on), a.sweep, a.strip)
            for a in tqdm(plan.assignments, desc="evaluation", disable=not progress)]
    return pd.concat(rows, ignore_index=True)


@dataclass(frozen=True)
class EvaluationResult:
    """What an evaluation wrote (``evaluation.json``'s content) and where its report is (None: not written)."""

    settings: dict
    methods: dict
    directions: list
    report: str | None = None

    @classmethod
    def from_summary(cls, summary: dict, report: str | Path | None = None) -> "EvaluationResult":
        return cls(summary["settings"], summary["methods"], summary["directions"],
                   None if report is None else str(report))
