"""Evaluate a mined run: every catalogue direction (and, with ``baselines``, the competing methods) at matched strength.

run directory -> reconstruct a few of the run's own images ("source") and invert held-out
images ("transfer") -> per direction, match its strength on the source images -> score it on
all its held-out images in one batch -> metrics.parquet, evaluation.json and report.html in
the run, plus a Prefect markdown and table artifact. Baselines reuse the run's own subspaces of
the source images (same latent, t and k), so only the whole-image one is computed again.

    python -m flows.evaluate out/run --baselines
"""

from __future__ import annotations

import argparse
import time

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stopping import stoppable
from localedit.bundled.samples import SAMPLES_DIR
from localedit.evaluation.plan import EvaluationResult, expected_methods, plan_evaluation
from localedit.evaluation.settings import EvaluationSettings
from tasks.evaluate import (
    baseline_directions,
    catalogue_directions,
    match_task,
    prepare_evaluation,
    publish,
    reference_task,
    score_task,
)
from tasks.runtime import gpu_tag_where_limited, local_slots, wait_all

DEFAULTS = EvaluationSettings()  # the flow's parameter defaults


@flow(name="evaluate-directions", task_runner=ThreadPoolTaskRunner(max_workers=local_slots()), log_prints=True)
@stoppable  # a signal stops the run within seconds
def evaluate_directions(run_dir: str, heldout: int = DEFAULTS.n_heldout, sources: int = DEFAULTS.n_source,
                        baselines: bool = False, target: float = DEFAULTS.target, max_rank: int = DEFAULTS.max_rank,
                        strip_images: int = DEFAULTS.strip_images, samples: str = str(SAMPLES_DIR),
                        progress: bool = True) -> EvaluationResult:
    """Score a run's directions as ``plan_evaluation`` assigns them; returns evaluation.json's content and the
    report path.

    Args:
        run_dir: a mined run with its catalogue (its directions are applied as the catalogue's edit settings say).
        heldout: held-out images (from ``samples``' held-out subset) to transfer every direction to.
        sources: the run's own images that directions are matched and scored on.
        baselines: also mine and score the baseline methods on the source images (one per image;
            held-out image j gets source j mod ``sources``'s baselines).
        target: RMS pixel change every direction is matched to.
        max_rank: catalogue directions of rank below this are scored.
        strip_images: held-out images in each direction's strip and alpha sweep.
        progress: show a progress bar per stage (baselines, evaluation).
    """
    start = time.perf_counter()
    settings = EvaluationSettings(target, sources, heldout, strip_images, max_rank)
    run = prepare_evaluation(run_dir, settings, samples)
    directions = catalogue_directions(run_dir, max_rank)
    references = reference_task(run)
    directions += references
    baseline, match, score = gpu_tag_where_limited(baseline_directions, match_task, score_task)
    if baselines:
        found = [baseline.submit(run, i) for i in range(len(run.source.keys))]
        wait_all(found, "baselines", progress)
        directions += [d for future in found for d in future.result()]
    plan = plan_evaluation(directions, run.source.keys, len(run.heldout.keys), settings, run_dir,
                           expected_methods(directions, baselines, run.complements))
    matches, scored = [], []
    for a in plan.assignments:
        matched = match.submit(run, a)
        matches.append(matched)
        if a.score_on:
            scored.append(score.submit(run, a, matched))
    wait_all([*matches, *scored], "evaluation", progress)
    frames = [m.result().rows for m in matches] + [f.result() for f in scored]
    record = {**run.record, "baselines": baselines, "max_rank": max_rank,
              "reference_methods": [d.method for d in references], "seconds": round(time.perf_counter() - start, 1)}
    result = publish(run_dir, frames, record, list(plan.expected_methods))
    print(f"evaluated {len(directions)} directions on {len(run.heldout.keys)} held-out images: {result.report}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--heldout", type=int, default=DEFAULTS.n_heldout)
    parser.add_argument("--sources", type=int, default=DEFAULTS.n_source)
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--target", type=float, default=DEFAULTS.target)
    parser.add_argument("--max-rank", type=int, default=DEFAULTS.max_rank)
    a = parser.parse_args()
    evaluate_directions(a.run_dir, a.heldout, a.sources, a.baselines, a.target, a.max_rank)


if __name__ == "__main__":
    main()
