"""Direction-quality benchmark: does a mining criterion find what the supervised reference finds?

On the bundled model, each criterion's top direction per region is scored the way the
evaluation scores every method (strength matched to an RMS change of 0.03 on the source
images, then transferred to held-out images), under two edit schedules: every reverse step
("all", the default) and t >= 500 ("from_t_edit", the former default). Reported per
(criterion, region, schedule): the better-sign locality median over held-out images (per image
the more local of +alpha and -alpha), the better-sign factor purity median, |cos| to the
region's supervised references, and the criterion's mining seconds.

Criteria:
- ``jive_individual``: the paper's JIVE individual direction (top singular vectors of the
  region-masked single-step Jacobian at t = 500, split by JIVE); one mining image.
- ``jive_complement``: the same with each region's complement as an extra JIVE block.
- ``penalised_jacobian``: top eigenvector of J^T (M - mu (1 - M)) J at t = 500 (mu = 3), a
  locality-penalised eigenproblem over the whole h-space, solved matrix-free by block Krylov
  (``localedit.core.jacobian.top_eigenpairs``) on JVP/VJP products; one mining image.
- ``region_contrast``: the same summed over the four source images (``localedit.core.contrast``).
- ``region_variation``: ours (``localedit.core.variation``), over the 24 bundled mining images.
- ``reference``: the supervised twin direction of the region's main factor (a yardstick).

    python benchmarks/direction_quality.py --json            # ~20-40 min on 2 CPU cores
    python benchmarks/direction_quality.py --quick --json    # 4 held-out images, "all" only
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from localedit.bundled.references import reference_directions, regions_of
from localedit.bundled.samples import load_samples
from localedit.core.contrast import contrast_directions
from localedit.core.ddim import invert
from localedit.core.mining import latent_at
from localedit.core.models import load_model
from localedit.core.regions import resolve_regions
from localedit.core.settings import EditSettings, MiningSettings
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import Direction, method_directions
from localedit.evaluation.compare import load_probe_or_note, variation_directions
from localedit.evaluation.scoring import Scorer, evaluate_direction, prepare_images
from localedit.evaluation.summary import with_best_sign
from localedit.utils.pixels import to_signed

MAIN_FACTOR = {"eyes": "eye_openness", "mouth": "mouth_curvature"}


def contrast(model, x_T, regions, t, name):
    """Region contrast (``localedit.core.contrast``) over the images with latents ``x_T``: top direction per region."""
    latent = latent_at(model, None, t, x_T=x_T)
    found = contrast_directions(model, latent.x_t, latent.t, regions, k=1)
    return [Direction(f"{name}:{r.name}", name, r.name, "h", vectors[:, 0], latent.t)
            for r, (vectors, _) in zip(regions, found)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="4 held-out images, the default schedule only")
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--t", type=int, default=MiningSettings.t)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n_heldout = 4 if args.quick else args.heldout
    schedules = [EditSettings()] + ([] if args.quick else [EditSettings(schedule="from_t_edit")])
    model = load_model()
    regions = resolve_regions(MiningSettings.regions, model.resolution)
    mine, mine_factors = load_samples("mine")
    held, held_factors = load_samples("heldout")
    source = prepare_images(model, mine[:4], mine_factors["file"][:4].tolist(), col.SOURCE_SET)
    heldout = prepare_images(model, held[:n_heldout], held_factors["file"][:n_heldout].tolist(), col.TRANSFER_SET)
    probe, _ = load_probe_or_note()
    references = reference_directions(model, args.t)

    found, seconds = [], {}
    start = time.perf_counter()
    per_image, _ = method_directions(model, None, regions, "mine_000", args.t, x_T=source.x_T[:1])
    seconds["jive_individual"] = seconds["jive_complement"] = time.perf_counter() - start
    found += [d for d in per_image if d.method in ("jive_individual", "jive_complement")]
    start = time.perf_counter()
    found += contrast(model, source.x_T[:1], regions, args.t, "penalised_jacobian")
    seconds["penalised_jacobian"] = time.perf_counter() - start
    start = time.perf_counter()
    found += contrast(model, source.x_T, regions, args.t, "region_contrast")
    seconds["region_contrast"] = (time.perf_counter() - start) / len(source.keys)
    start = time.perf_counter()
    mine_x_T = invert(model, to_signed(mine))
    found += variation_directions(model, mine_x_T, regions, args.t)
    seconds["region_variation"] = (time.perf_counter() - start) / len(mine)
    found += [Direction(f"reference:{r.name}", "reference", r.name, "h", references[MAIN_FACTOR[r.name]], args.t)
              for r in regions]

    records = []
    for edit in schedules:
        scorer = Scorer({r.name: r for r in regions}, None, probe, edit)
        for d in found:
            rows = evaluate_direction(model, d, scorer, (source, [0, 1, 2, 3]), (heldout, list(range(n_heldout))))
            scored = with_best_sign(rows[(rows[col.KIND] == col.KIND_MATCHED) & (rows[col.IMAGE_SET] == col.TRANSFER_SET)])
            cos = {f: round(abs(float(d.vector @ references[f])), 3) for f in regions_of()[d.region]}
            records.append({
                "criterion": d.method, "region": d.region, "schedule": edit.schedule,
                "locality_best_sign_median": round(float(scored[col.LOCALITY_BEST_SIGN].median()), 3),
                "locality_median": round(float(pd.to_numeric(scored[col.LOCALITY]).median()), 3),
                "factor_purity_best_sign_median": round(float(scored[col.FACTOR_PURITY_BEST_SIGN].median()), 3),
                "matched_alpha": round(float(scored[col.MATCHED_ALPHA].iloc[0]), 4),
                "cos_to_references": cos,
                "mining_seconds_per_image": None if d.method == "reference" else round(seconds[d.method], 2),
            })
            if not args.json:
                print(records[-1], flush=True)
    result = {"benchmark": "direction_quality", "heldout_images": n_heldout, "t": args.t, "results": records}
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
