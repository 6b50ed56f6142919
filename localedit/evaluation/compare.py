"""The method comparison: mine every method on source images, score it there and on held-out images.

Orchestration only: what is scored where is ``localedit.evaluation.plan`` (shared with the
evaluation flow), scoring ``localedit.evaluation.scoring``, strength matching
``localedit.evaluation.matching``, the result files ``localedit.evaluation.layout``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from localedit.bundled.probe import FactorProbe, load_probe
from localedit.bundled.references import REFERENCE_PREFIX, TWINS, reference_directions, trained_on_generator
from localedit.bundled.samples import SAMPLES_DIR, load_samples
from localedit.bundled.synthetic import CLOSED_EYE
from localedit.core.ddim import DEFAULT_STEPS, invert
from localedit.core.mining import DEFAULT_K, DEFAULT_T
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region, resolve_regions
from localedit.core.settings import EditSettings, MiningSettings, jive_params
from localedit.core.variation import fit_region_variation
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import Direction, method_directions
from localedit.evaluation.metrics import Perceptual
from localedit.evaluation.plan import EvaluationResult, execute, expected_methods, plan_evaluation
from localedit.evaluation.scoring import ImageSet, Scorer, prepare_images
from localedit.evaluation.settings import EvaluationSettings
from localedit.evaluation.summary import save_results
from localedit.utils.pixels import to_signed


def supervised_references(model: DiffusionModel, t: int, num_steps: int = DEFAULT_STEPS) -> list[Direction]:
    """Reference rows ``reference_<factor>`` (supervised twins, not a method): none unless the model was
    trained on the bundled generator's faces."""
    if not trained_on_generator(model):
        return []
    found = reference_directions(model, t, num_steps)
    return [Direction(f"{REFERENCE_PREFIX}{twin.factor}", f"{REFERENCE_PREFIX}{twin.factor}", twin.region, "h",
                      found[twin.factor], t, None, {"supervised": True}) for twin in TWINS]


def variation_directions(model: DiffusionModel, x_T: torch.Tensor, regions: Sequence[Region], t: int,
                         num_steps: int = DEFAULT_STEPS) -> list[Direction]:
    """The top region-variation direction of each region, and the top joint-variation direction, over the images
    with latents ``x_T`` (n, C, H, W)."""
    fit = fit_region_variation(model, x_T, regions, t, num_steps)
    found = [Direction(f"region_variation:{r.name}", "region_variation", r.name, "h", basis[:, 0], t)
             for r, basis in zip(regions, fit.directions_) if basis.shape[1]]
    return found + [Direction("joint_variation", "joint_variation", None, "h", fit.joint_directions_[:, 0], t)]


def compare(model: DiffusionModel, source: ImageSet, heldout: ImageSet, scorer: Scorer, t: int = DEFAULT_T,
            k: int = DEFAULT_K, out_dir: str | Path | None = None,
            strip_images: int = EvaluationSettings.strip_images, jive: dict | None = None,
            progress: bool = False, shared: Sequence[Direction] = ()) -> tuple[pd.DataFrame, list[Direction]]:
    """Mine every method on each source image; score it there ("source") and on held-out images ("transfer"),
    as ``plan_evaluation`` assigns them (with the ``shared`` directions, found on many images at once:
    region variation, references); strips go under ``out_dir`` when given."""
    regions = list(scorer.regions.values())
    found = list(shared)
    for i, key in enumerate(tqdm(source.keys, desc="source images", disable=not progress)):
        found += method_directions(model, None, regions, key, t, k, source.num_steps, seed=i,
                                   x_T=source.x_T[i : i + 1].to(model.device), jive=jive)[0]
    settings = EvaluationSettings(target=scorer.target, n_source=len(source.keys), n_heldout=len(heldout.keys),
                                  strip_images=strip_images)
    plan = plan_evaluation(found, source.keys, len(heldout.keys), settings, out_dir)
    return execute(model, plan, source, heldout, scorer, progress), found


def load_probe_or_note(path: str | Path | None = None) -> tuple[FactorProbe | None, str]:
    """The factor probe, or None and why (factor purity is then reported as missing)."""
    try:
        return load_probe(path), ""
    except FileNotFoundError as err:
        return None, f"factor probe unavailable ({err}); factor purity is not measured"


def _both_eye_states(factors: pd.DataFrame, n: int) -> list[int]:
    """n row indices alternating closed and open eyes, so both signs of an eye edit get exercised."""
    closed = factors.index[factors["eye_openness"] < CLOSED_EYE].tolist()
    opened = factors.index[factors["eye_openness"] >= CLOSED_EYE].tolist()
    mixed = [i for pair in zip(opened, closed) for i in pair] + opened[len(closed):] + closed[len(opened):]
    return mixed[:n]


def run_comparison(model: DiffusionModel, out_dir: str | Path, regions: str = MiningSettings.regions,
                   n_source: int = EvaluationSettings.n_source, n_heldout: int = EvaluationSettings.n_heldout,
                   target: float = EvaluationSettings.target, t: int = DEFAULT_T, k: int = DEFAULT_K,
                   num_steps: int = DEFAULT_STEPS, perceptual: Perceptual | None = None,
                   probe: FactorProbe | None = None, notes: dict | None = None, samples: str | Path = SAMPLES_DIR,
                   jive: dict | None = None, progress: bool = False) -> EvaluationResult:
    """The method comparison on the bundled samples: mine on the mining subset, transfer to held-out images.

    ``jive``: the JIVE estimator's parameters (``JIVE.get_params``; default: JIVE's defaults).
    Writes metrics.parquet, evaluation.json and strips/ to ``out_dir``; returns evaluation.json's content.
    """
    start = time.perf_counter()
    jive = jive_params(**(jive or {}))
    region_list = resolve_regions(regions, model.resolution)
    mine, mine_factors = load_samples("mine", samples)
    held, held_factors = load_samples("heldout", samples)
    if len(held) < n_heldout or len(mine) < n_source:
        raise ValueError(f"asked for {n_source} mining and {n_heldout} held-out images; "
                         f"the samples have {len(mine)} and {len(held)}")
    pick = _both_eye_states(mine_factors, n_source)
    mine_x_T = invert(model, to_signed(mine.to(model.device)), num_steps)  # every mining image: region variation's data
    source = prepare_images(model, mine[pick], mine_factors["file"][pick].tolist(), col.SOURCE_SET, num_steps,
                            x_T=mine_x_T[pick])
    heldout = prepare_images(model, held[:n_heldout], held_factors["file"][:n_heldout].tolist(), col.TRANSFER_SET,
                             num_steps)
    edit = EditSettings()
    scorer = Scorer({r.name: r for r in region_list}, perceptual, probe, edit=edit, target=target)
    shared = [*variation_directions(model, mine_x_T, region_list, t, num_steps),
              *supervised_references(model, t, num_steps)]
    rows, _ = compare(model, source, heldout, scorer, t, k, out_dir, jive=jive, progress=progress, shared=shared)
    settings = {"model_source": model.source, "model_fingerprint": model.fingerprint, "regions": regions,
                "chance_locality": {r.name: round(r.fraction, 3) for r in region_list},
                "source_images": n_source, "heldout_images": n_heldout, "target_change": target, "t": t, "k": k,
                "num_steps": num_steps, "jive": jive, "edit": edit.to_attrs(),
                "seconds": round(time.perf_counter() - start, 1), **(notes or {})}
    return EvaluationResult.from_summary(save_results(out_dir, rows, settings, expected_methods(shared)))
