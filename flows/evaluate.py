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
from localedit.evaluation.layout import strip_path
from localedit.evaluation.metrics import TARGET_CHANGE
from tasks.evaluate import (
    baseline_directions,
    catalogue_directions,
    match_task,
    prepare_evaluation,
    publish,
    reference_task,
    score_task,
    source_index,
    sweep_task,
)
from tasks.runtime import local_slots, wait_all


@flow(name="evaluate-directions", task_runner=ThreadPoolTaskRunner(max_workers=local_slots()), log_prints=True)
@stoppable  # a signal stops the run within seconds
def evaluate_directions(run_dir: str, heldout: int = 16, sources: int = 4, baselines: bool = False,
                        target: float = TARGET_CHANGE, max_rank: int = 1, strip_images: int = 3,
                        samples: str = str(SAMPLES_DIR), progress: bool = True) -> dict:
    """Score a run's directions; returns evaluation.json's content plus the report path.

    Args:
        run_dir: a mined run with its catalogue.
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
    plan = prepare_evaluation(run_dir, heldout, sources, target, samples)
    directions = catalogue_directions(run_dir, max_rank)
    references = reference_task(plan)
    directions += references
    n_source, n_heldout = len(plan["source"].keys), len(plan["heldout"].keys)
    if baselines:
        found = [baseline_directions.submit(plan, i) for i in range(n_source)]
        wait_all(found, "baselines", progress)
        directions += [d for future in found for d in future.result()]
    matches, scored = [], []
    for d in directions:
        match = match_task.submit(plan, d)
        matches.append(match)
        own = source_index(plan, d)
        targets = list(range(n_heldout)) if d.source is None else list(range(own[0], n_heldout, n_source))
        scored.append(score_task.submit(plan, d, match, targets))
        if d.source is None or own[0] == 0:
            scored.append(sweep_task.submit(plan, d, match, targets[:strip_images], str(strip_path(run_dir, d.id))))
    wait_all([*matches, *scored], "evaluation", progress)
    frames = [m.result()["rows"] for m in matches] + [f.result() for f in scored]
    settings = {**plan["settings"], "baselines": baselines, "max_rank": max_rank,
                "reference_methods": [d.method for d in references],
                "seconds": round(time.perf_counter() - start, 1)}
    result = publish(run_dir, frames, settings)
    print(f"evaluated {len(directions)} directions on {n_heldout} held-out images: {result['report']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--target", type=float, default=TARGET_CHANGE)
    parser.add_argument("--max-rank", type=int, default=1)
    a = parser.parse_args()
    evaluate_directions(a.run_dir, a.heldout, a.sources, a.baselines, a.target, a.max_rank)


if __name__ == "__main__":
    main()
