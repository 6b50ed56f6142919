"""Score edit directions at matched strength: per (direction x image) metric rows, transfer, factor purity.

A weak edit always looks local, so every direction is first given the strength (alpha) at
which its edits change the image by a fixed amount (RMS pixel change ``target``, averaged over
+alpha and -alpha), found by bisection on a few edits. Rows are then scored at +-alpha:
``split="source"`` on the image a direction was found on, ``split="transfer"`` on held-out
images (the paper's claim is that directions transfer). The reference for every metric is
the unedited reconstruction (alpha = 0), so inversion error never counts as edit.

Factor purity reads edits with the factor probe: the share of the predicted (standardised,
squared) factor change that falls on the factors of the direction's region.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from localedit.baselines import METHODS, Direction, method_directions
from localedit.ddim import DEFAULT_STEPS, EditSchedule, denoise, invert
from localedit.editing import ALPHA_RANGE, edit, write_strip
from localedit.metrics import TARGET_CHANGE, Perceptual, image_metrics, total_change
from localedit.mining import DEFAULT_K, DEFAULT_T
from localedit.models import DiffusionModel
from localedit.pixels import to_signed, to_unit
from localedit.probe import FactorProbe, factor_change, factor_purity, load_probe, region_factors, scope_factors
from localedit.references import REFERENCE_PREFIX, TWINS, reference_directions, trained_on_generator
from localedit.regions import Region, resolve_regions
from localedit.samples import SAMPLES_DIR, load_samples
from localedit.summary import save_results
from localedit.synthetic import CLOSED_EYE, GLOBAL_SCOPE
from localedit.variation import fit_region_variation

SWEEP = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)  # multiples of the matched alpha for strips and locality-vs-alpha


@dataclass
class ImageSet:
    """Images with their DDIM latents and unedited reconstructions, inverted once and shared by every direction."""

    keys: list[str]
    split: str
    images: torch.Tensor
    x_T: torch.Tensor
    reference: torch.Tensor
    num_steps: int
    _x_t: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def x_at(self, model: DiffusionModel, t: int) -> torch.Tensor:
        """Latents on the reverse path at timestep t (where x-space directions are added)."""
        if t not in self._x_t:
            self._x_t[t] = denoise(model, self.x_T.to(model.device), self.num_steps, stop_t=t).cpu()
        return self._x_t[t]


def prepare_images(model: DiffusionModel, images: torch.Tensor | None, keys: Sequence[str], split: str,
                   num_steps: int = DEFAULT_STEPS, x_T: torch.Tensor | None = None) -> ImageSet:
    """Invert images (n, C, H, W in [0, 1]) unless their ``x_T`` is given, and reconstruct them: the alpha = 0 reference.

    Without images (x_T of model samples) the reconstruction stands in for the image.
    """
    if x_T is None:
        if images is None:
            raise ValueError("give images, their x_T, or both")
        x_T = invert(model, to_signed(images.to(model.device)), num_steps)
    if len(keys) != len(x_T):
        raise ValueError(f"{len(keys)} keys for {len(x_T)} images")
    reference = to_unit(denoise(model, x_T.to(model.device), num_steps))
    images = reference if images is None else images.cpu()
    return ImageSet(list(keys), split, images, x_T.cpu(), reference, num_steps)


def apply_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    alphas: Sequence[float], schedule: EditSchedule = EditSchedule()) -> torch.Tensor:
    """Edit images[index] at every alpha: (n, m, C, H, W) in [0, 1].

    h directions go through ``editing.edit`` (alpha relative to ||h||, on the schedule's steps);
    x directions are added once to x_t at the direction's timestep (alpha relative to ||x_t||),
    as LOCO-Edit does, and denoised from there.
    """
    index = list(index)
    if direction.space == "h":
        return edit(model, None, direction.vector, alphas, schedule, images.num_steps, x_T=images.x_T[index].to(model.device))
    x = images.x_at(model, direction.t)[index].to(model.device)
    n, m = len(index), len(alphas)
    a = torch.as_tensor(list(alphas), dtype=x.dtype, device=x.device).repeat(n)
    batch = x.repeat_interleave(m, 0)
    batch = batch + (a * batch.flatten(1).norm(dim=1)).view(-1, 1, 1, 1) * direction.vector.to(batch).view(1, *x.shape[1:])
    out = denoise(model, batch, images.num_steps, start_t=direction.t)
    return to_unit(out).view(n, m, *x.shape[1:])


@dataclass
class Match:
    """The alpha found for a target change, and what the final measurement returned."""

    alpha: float
    change: float
    matched: bool
    evaluations: int
    result: object = None


def match_strength(measure: Callable[[float], tuple[float, object]], target: float, alpha0: float = 0.1,
                   rtol: float = 0.1, max_evals: int = 6, bounds: tuple[float, float] = ALPHA_RANGE) -> Match:
    """Alpha whose change ``measure(alpha)[0]`` is within ``rtol`` of ``target``: safeguarded bisection on log alpha.

    Before a bracket exists the change is taken as proportional to alpha (edits are nearly
    linear at small alpha); inside one, log change is interpolated linearly in log alpha and
    the guess is kept within the middle half of the bracket, so the bracket loses at least a
    quarter of its width per step whatever the curve. The closest measurement is returned;
    ``matched`` says whether it is within tolerance (a direction may saturate below the target).
    """
    if target <= 0:
        raise ValueError(f"target change must be positive, got {target}")
    lo_b, hi_b = math.log(bounds[0]), math.log(bounds[1])
    log_target = math.log(target)
    lo = hi = None  # (log alpha, log change) just below / above the target
    best: Match | None = None
    a = min(max(math.log(alpha0), lo_b), hi_b)
    for n in range(1, max_evals + 1):
        change, result = measure(math.exp(a))
        c = math.log(max(change, 1e-12))
        if best is None or abs(c - log_target) < abs(math.log(max(best.change, 1e-12)) - log_target):
            best = Match(math.exp(a), change, False, n, result)
        best.evaluations = n
        if abs(change / target - 1) <= rtol:
            best.matched = True
            return best
        if change < target:
            lo = (a, c)
        else:
            hi = (a, c)
        if lo is not None and hi is not None:
            frac = (log_target - lo[1]) / (hi[1] - lo[1]) if hi[1] > lo[1] else 0.5
            new = lo[0] + min(max(frac, 0.25), 0.75) * (hi[0] - lo[0])
        else:
            step = log_target - c  # change proportional to alpha; at most x8 per step, at least x1.25
            new = a + math.copysign(min(max(abs(step), math.log(1.25)), math.log(8)), step)
        new = min(max(new, lo_b), hi_b)
        if new == a:
            break  # pinned at a bound: the target is out of reach
        a = new
    return best


@dataclass
class Scorer:
    """What scoring needs besides the direction: the regions, the metric networks, the edit schedule, the target change."""

    regions: dict[str, Region]
    perceptual: Perceptual | None = None
    probe: FactorProbe | None = None
    schedule: EditSchedule = field(default_factory=EditSchedule)
    target: float = TARGET_CHANGE


def score_edits(direction: Direction, images: ImageSet, index: Sequence[int], edited: torch.Tensor,
                alphas: Sequence[float], scorer: Scorer, match: Match, kind: str = "matched") -> pd.DataFrame:
    """One row per (image, alpha, scored region): a region-tied direction is scored on its region,
    a region-free one (joint, global, random) on every region."""
    index = list(index)
    n, m = edited.shape[:2]
    original = images.reference[index].repeat_interleave(m, 0)
    flat = edited.reshape(n * m, *edited.shape[2:])
    alpha = np.tile(np.asarray(alphas, float), n)
    ids = pd.DataFrame({
        "direction": direction.id, "method": direction.method, "direction_region": direction.region,
        "space": direction.space, "source": direction.source, "split": images.split,
        "label": direction.info.get("label", ""), "label_share": direction.info.get("label_share", math.nan),
        "image": np.repeat([images.keys[i] for i in index], m), "kind": kind, "alpha": alpha,
        "alpha_mult": alpha / match.alpha, "matched_alpha": match.alpha, "matched": match.matched,
        "target_change": scorer.target,
    })
    changes = factor_change(scorer.probe, original, flat) if scorer.probe is not None else None
    frames = []
    for name in [direction.region] if direction.region else list(scorer.regions):
        metrics = image_metrics(original, flat, scorer.regions[name].mask, scorer.perceptual)
        frame = ids.assign(region=name, **{k: (None if v is None else v.numpy()) for k, v in metrics.items()})
        if changes is not None:
            frame = frame.assign(factor_purity=factor_purity(changes, region_factors(name)),
                                 global_purity=factor_purity(changes, scope_factors(GLOBAL_SCOPE)),
                                 **{f"factor_{c}": changes[c].to_numpy() for c in changes.columns})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def match_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    scorer: Scorer, **options) -> Match:
    """Strength matching on images[index]: change = mean RMS change of the +alpha and -alpha edits.

    ``Match.result`` holds the final edits (n, 2, C, H, W), so the matching images need no second pass.
    """
    reference = images.reference[list(index)]

    def measure(alpha: float):
        edited = apply_direction(model, direction, images, index, (alpha, -alpha), scorer.schedule)
        return float(total_change(reference.repeat_interleave(2, 0), edited.flatten(0, 1)).mean()), edited

    return match_strength(measure, scorer.target, **options)


def score_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    match: Match, scorer: Scorer) -> pd.DataFrame:
    """Rows for images[index] edited at the matched +-alpha."""
    alphas = (match.alpha, -match.alpha)
    edited = apply_direction(model, direction, images, index, alphas, scorer.schedule)
    return score_edits(direction, images, index, edited, alphas, scorer, match)


def sweep_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    match: Match, scorer: Scorer, strip: str | Path | None = None) -> pd.DataFrame:
    """Rows at ``SWEEP`` multiples of alpha (kind "sweep"); with ``strip``, their edit strip, region outlined."""
    index = list(index)
    sweep = [s * match.alpha for s in SWEEP]
    edited = apply_direction(model, direction, images, index, sweep, scorer.schedule)
    if strip is not None:
        # The alpha = 0 column is the reference itself, placed between the negative and positive edits.
        k = sum(s < 0 for s in SWEEP)
        shown = torch.cat([edited[:, :k], images.reference[index][:, None], edited[:, k:]], 1)
        mask = scorer.regions[direction.region].mask if direction.region else None
        write_strip(strip, images.images[index], shown, [*SWEEP[:k], 0.0, *SWEEP[k:]], mask=mask)  # labelled in multiples
    return score_edits(direction, images, index, edited, sweep, scorer, match, kind="sweep")


def evaluate_direction(model: DiffusionModel, direction: Direction, scorer: Scorer,
                       match_on: tuple[ImageSet, Sequence[int]], score_on: Sequence[tuple[ImageSet, Sequence[int]]] = (),
                       sweep_on: tuple[ImageSet, Sequence[int]] | None = None, strip: str | Path | None = None) -> pd.DataFrame:
    """Match a direction's strength, then score it at +-alpha on the matching images and on ``score_on``,
    and over ``SWEEP`` on ``sweep_on``."""
    match = match_direction(model, direction, *match_on, scorer)
    frames = [score_edits(direction, *match_on, match.result, (match.alpha, -match.alpha), scorer, match)]
    frames += [score_direction(model, direction, images, index, match, scorer) for images, index in score_on if len(index)]
    if sweep_on is not None and len(sweep_on[1]):
        frames.append(sweep_direction(model, direction, *sweep_on, match, scorer, strip))
    return pd.concat(frames, ignore_index=True)


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


STRIPS_DIR = "strips"


def strip_path(out_dir: str | Path, direction_id: str) -> Path:
    """Where a direction's edit strip goes under a results directory (ids hold ':' and '/')."""
    return Path(out_dir) / STRIPS_DIR / ("".join(c if c.isalnum() or c in "-_" else "_" for c in direction_id) + ".png")


def compare(model: DiffusionModel, source: ImageSet, heldout: ImageSet, scorer: Scorer, t: int = DEFAULT_T,
            k: int = DEFAULT_K, out_dir: str | Path | None = None, strip_images: int = 3, jive: dict | None = None,
            progress: bool = False, shared: Sequence[Direction] = ()) -> tuple[pd.DataFrame, list[Direction]]:
    """Mine every method on each source image; score it there ("source") and on held-out images ("transfer").

    Held-out image j gets the directions of source image j mod M, so every method is scored on
    every held-out image exactly once whatever M is. The first source's directions also get a
    sweep over alpha on a few of its held-out images, and a strip under ``out_dir`` when given.
    ``shared`` directions (found on many images at once: region variation, references) are
    matched on every source image and scored on every held-out image.
    """
    regions = list(scorer.regions.values())
    rows, found = [], list(shared)
    everything = list(range(len(heldout.keys)))
    for d in shared:
        rows.append(evaluate_direction(
            model, d, scorer, (source, list(range(len(source.keys)))), [(heldout, everything)],
            sweep_on=(heldout, everything[:strip_images]) if strip_images else None,
            strip=strip_path(out_dir, d.id) if strip_images and out_dir is not None else None))
    for i, key in enumerate(tqdm(source.keys, desc="source images", disable=not progress)):
        directions, _ = method_directions(model, None, regions, key, t, k, source.num_steps, seed=i,
                                          x_T=source.x_T[i : i + 1].to(model.device), jive=jive)
        transfer = list(range(i, len(heldout.keys), len(source.keys)))
        showcase = i == 0 and strip_images > 0
        for d in tqdm(directions, desc=key, leave=False, disable=not progress):
            rows.append(evaluate_direction(
                model, d, scorer, (source, [i]), [(heldout, transfer)],
                sweep_on=(heldout, transfer[:strip_images]) if showcase else None,
                strip=strip_path(out_dir, d.id) if showcase and out_dir is not None else None))
        found += directions
    return pd.concat(rows, ignore_index=True), found


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


def run_comparison(model: DiffusionModel, out_dir: str | Path, regions: str = "eyes,mouth", n_source: int = 4,
                   n_heldout: int = 16, target: float = TARGET_CHANGE, t: int = DEFAULT_T, k: int = DEFAULT_K,
                   num_steps: int = DEFAULT_STEPS, perceptual: Perceptual | None = None,
                   probe: FactorProbe | None = None, notes: dict | None = None, samples: str | Path = SAMPLES_DIR,
                   jive: dict | None = None, progress: bool = False) -> dict:
    """The method comparison on the bundled samples: mine on the mining split, transfer to held-out images.

    Writes metrics.parquet, evaluation.json and strips/ to ``out_dir``; returns evaluation.json's content.
    """
    start = time.perf_counter()
    region_list = resolve_regions(regions, model.resolution)
    mine, mine_factors = load_samples("mine", samples)
    held, held_factors = load_samples("heldout", samples)
    if len(held) < n_heldout or len(mine) < n_source:
        raise ValueError(f"asked for {n_source} mining and {n_heldout} held-out images; "
                         f"the samples have {len(mine)} and {len(held)}")
    pick = _both_eye_states(mine_factors, n_source)
    mine_x_T = invert(model, to_signed(mine.to(model.device)), num_steps)  # every mining image: region variation's data
    source = prepare_images(model, mine[pick], mine_factors["file"][pick].tolist(), "source", num_steps,
                            x_T=mine_x_T[pick])
    heldout = prepare_images(model, held[:n_heldout], held_factors["file"][:n_heldout].tolist(), "transfer", num_steps)
    scorer = Scorer({r.name: r for r in region_list}, perceptual, probe, target=target)
    shared = [*variation_directions(model, mine_x_T, region_list, t, num_steps),
              *supervised_references(model, t, num_steps)]
    rows, _ = compare(model, source, heldout, scorer, t, k, out_dir, jive=jive, progress=progress, shared=shared)
    settings = {"model_source": model.source, "model_fingerprint": model.fingerprint, "regions": regions,
                "chance_locality": {r.name: round(r.fraction, 3) for r in region_list},
                "source_images": n_source, "heldout_images": n_heldout, "target_change": target, "t": t, "k": k,
                "num_steps": num_steps, "jive": jive or {}, "seconds": round(time.perf_counter() - start, 1), **(notes or {})}
    return save_results(out_dir, rows, settings, [*METHODS, *(d.method for d in shared if d.method.startswith(REFERENCE_PREFIX))])
