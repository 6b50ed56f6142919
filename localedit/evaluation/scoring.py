"""Score edit directions at matched strength: per (direction x image) metric rows, transfer, factor purity.

Every direction is first given the strength (alpha) at which its edits change the image by a
fixed amount (RMS pixel change ``target``, averaged over +alpha and -alpha; ``matching``). Rows
are then scored at +-alpha: ``image_set="source"`` on the image a direction was found on,
``image_set="transfer"`` on held-out images (the paper's claim is that directions transfer). The
reference for every metric is the unedited reconstruction (alpha = 0), so inversion error never
counts as edit. The rows' columns are ``localedit.evaluation.schema``'s.

Factor purity reads edits with the factor probe: the share of the predicted (standardised,
squared) factor change that falls on the factors of the direction's region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from localedit.bundled.probe import FactorProbe, factor_change, factor_purity, region_factors, scope_factors
from localedit.bundled.synthetic import GLOBAL_SCOPE
from localedit.core.ddim import DEFAULT_STEPS, EditSchedule, denoise, invert
from localedit.core.editing import edit, write_strip
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region
from localedit.core.settings import EditSettings
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import Direction
from localedit.evaluation.matching import Match, match_strength
from localedit.evaluation.metrics import Perceptual, image_metrics, total_change
from localedit.evaluation.settings import EvaluationSettings
from localedit.utils.pixels import to_signed, to_unit

# Direction.info key: a first guess of the matched alpha. A catalogue row's reading (its alpha for the
# target change on the run's first images, the evaluation's source images) matched 7 of 8 rank-0 rows
# of the bundled run in one search step instead of 1-3 (17 -> 9 measurements, each 8 edits).
ALPHA_HINT = "alpha_hint"
SWEEP = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)  # multiples of the matched alpha for strips and locality-vs-alpha


@dataclass
class ImageSet:
    """Images with their DDIM latents and unedited reconstructions, inverted once and shared by every direction."""

    keys: list[str]
    image_set: str  # schema.SOURCE_SET or schema.TRANSFER_SET: the rows' IMAGE_SET
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


def prepare_images(model: DiffusionModel, images: torch.Tensor | None, keys: Sequence[str], image_set: str,
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
    return ImageSet(list(keys), image_set, images, x_T.cpu(), reference, num_steps)


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
class Scorer:
    """What scoring needs besides the direction: the regions, the metric networks, how directions are applied
    (a run's are scored as its catalogue says they apply), the target change."""

    regions: dict[str, Region]
    perceptual: Perceptual | None = None
    probe: FactorProbe | None = None
    edit: EditSettings = field(default_factory=EditSettings)
    target: float = EvaluationSettings.target

    @property
    def schedule(self) -> EditSchedule:
        return self.edit.edit_schedule


def score_edits(direction: Direction, images: ImageSet, index: Sequence[int], edited: torch.Tensor,
                alphas: Sequence[float], scorer: Scorer, match: Match, kind: str = col.KIND_MATCHED) -> pd.DataFrame:
    """One row per (image, alpha, scored region), columns as ``schema.check_rows`` wants: a region-tied
    direction is scored on its region, a region-free one (joint, global, random) on every region.

    ``edited`` (n, m, C, H, W) in [0, 1]: images[index] edited at each of the m ``alphas``."""
    index = list(index)
    n, m = edited.shape[:2]
    original = images.reference[index].repeat_interleave(m, 0)
    flat = edited.reshape(n * m, *edited.shape[2:])
    alpha = np.tile(np.asarray(alphas, float), n)
    ids = pd.DataFrame({
        col.DIRECTION: direction.id, col.METHOD: direction.method, col.DIRECTION_REGION: direction.region,
        col.SPACE: direction.space, col.SOURCE: direction.source, col.IMAGE_SET: images.image_set,
        col.LABEL: direction.info.get(col.LABEL, ""), col.LABEL_SHARE: direction.info.get(col.LABEL_SHARE, math.nan),
        col.IMAGE: np.repeat([images.keys[i] for i in index], m), col.KIND: kind, col.ALPHA: alpha,
        col.ALPHA_MULT: alpha / match.alpha, col.MATCHED_ALPHA: match.alpha, col.MATCHED: match.matched,
        col.TARGET_CHANGE: scorer.target,
    })
    changes = factor_change(scorer.probe, original, flat) if scorer.probe is not None else None
    frames = []
    for name in [direction.region] if direction.region else list(scorer.regions):
        metrics = image_metrics(original, flat, scorer.regions[name].mask, scorer.perceptual)
        frame = ids.assign(**{col.REGION: name}, **{k: (None if v is None else v.numpy()) for k, v in metrics.items()})
        if changes is not None:
            frame = frame.assign(**{col.FACTOR_PURITY: factor_purity(changes, region_factors(name)),
                                    col.GLOBAL_PURITY: factor_purity(changes, scope_factors(GLOBAL_SCOPE))},
                                 **{col.factor_column(c): changes[c].to_numpy() for c in changes.columns})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def match_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    scorer: Scorer, **options) -> Match[torch.Tensor]:
    """Strength matching on images[index]: change = mean RMS change of the +alpha and -alpha edits.

    ``Match.result`` holds the final edits (n, 2, C, H, W) in [0, 1], so the matching images need no second pass.
    The search starts from ``direction.info[ALPHA_HINT]`` where there is one.
    """
    reference = images.reference[list(index)]
    hint = direction.info.get(ALPHA_HINT, math.nan)
    if math.isfinite(hint) and hint > 0:
        options = {"alpha0": hint, **options}

    def measure(alpha: float) -> tuple[float, torch.Tensor]:
        edited = apply_direction(model, direction, images, index, (alpha, -alpha), scorer.schedule)
        return float(total_change(reference.repeat_interleave(2, 0), edited.flatten(0, 1)).mean()), edited

    return match_strength(measure, scorer.target, **{"bounds": scorer.edit.alpha_range, **options})


def score_direction(model: DiffusionModel, direction: Direction, images: ImageSet, index: Sequence[int],
                    match: Match, scorer: Scorer, sweep: int = 0, strip: str | Path | None = None) -> pd.DataFrame:
    """Rows for images[index] edited at the matched +-alpha, and for its first ``sweep`` images at every ``SWEEP``
    multiple of alpha (kind ``schema.KIND_SWEEP``; with ``strip``, their edit strip, region outlined).

    The sweep's +-1 columns are the matched edits themselves, not edited a second time (a third of a sweep's edits).
    """
    index = list(index)
    alphas = (match.alpha, -match.alpha)
    edited = apply_direction(model, direction, images, index, alphas, scorer.schedule)
    frames = [score_edits(direction, images, index, edited, alphas, scorer, match)]
    if sweep:
        frames.append(_sweep_rows(model, direction, images, index[:sweep], edited[:sweep], match, scorer, strip))
    return pd.concat(frames, ignore_index=True)


def _sweep_rows(model: DiffusionModel, direction: Direction, images: ImageSet, index: list[int],
                matched: torch.Tensor, match: Match, scorer: Scorer, strip: str | Path | None) -> pd.DataFrame:
    """Sweep rows of images[index] whose matched edits (n, 2, C, H, W) at +alpha and -alpha are ``matched``."""
    others = [s for s in SWEEP if abs(s) != 1.0]
    edited = apply_direction(model, direction, images, index, [s * match.alpha for s in others], scorer.schedule)
    by_multiple = {**dict(zip(others, edited.unbind(1))), 1.0: matched[:, 0], -1.0: matched[:, 1]}
    edited = torch.stack([by_multiple[s] for s in SWEEP], 1)
    if strip is not None:
        # The alpha = 0 column is the reference itself, placed between the negative and positive edits.
        k = sum(s < 0 for s in SWEEP)
        shown = torch.cat([edited[:, :k], images.reference[index][:, None], edited[:, k:]], 1)
        mask = scorer.regions[direction.region].mask if direction.region else None
        write_strip(strip, images.images[index], shown, [*SWEEP[:k], 0.0, *SWEEP[k:]], mask=mask)  # labelled in multiples
    return score_edits(direction, images, index, edited, [s * match.alpha for s in SWEEP], scorer, match,
                       kind=col.KIND_SWEEP)


def evaluate_direction(model: DiffusionModel, direction: Direction, scorer: Scorer,
                       match_on: tuple[ImageSet, Sequence[int]], score_on: tuple[ImageSet, Sequence[int]] | None = None,
                       sweep: int = 0, strip: str | Path | None = None) -> pd.DataFrame:
    """Match a direction's strength, then score it at +-alpha on the matching images and on ``score_on``,
    and over ``SWEEP`` on the first ``sweep`` images of ``score_on``."""
    match = match_direction(model, direction, *match_on, scorer)
    frames = [score_edits(direction, *match_on, match.result, (match.alpha, -match.alpha), scorer, match)]
    if score_on is not None and len(score_on[1]):
        frames.append(score_direction(model, direction, *score_on, match, scorer, sweep, strip))
    return pd.concat(frames, ignore_index=True)
