"""Name what a direction does: the generator factor it moves most, read by the factor probe, how local
its edits are on a few images, and the supervised reference it is closest to.

A catalogue row then reads ``eyes/individual/0  eye_openness 0.81`` instead of a bare id: the
label is the factor with the largest share of the probe's predicted (standardised, squared)
change when a few images are edited at +-alpha, and the share says how pure the edit is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from localedit.bundled.probe import FactorProbe, factor_change, factor_purity, region_factors
from localedit.core.ddim import DEFAULT_STEPS, denoise
from localedit.core.editing import edit_many
from localedit.core.models import DiffusionModel
from localedit.core.settings import EditSettings
from localedit.evaluation.metrics import locality, total_change
from localedit.evaluation.settings import EvaluationSettings
from localedit.utils.pixels import to_unit

PROBE_ALPHA = 0.1  # relative to ||h||: the first, probing edit, from which the matched strength is extrapolated


@dataclass
class Reading:
    """What edits at +-alpha on a few images showed of one direction."""

    label: str  # the factor moved most ("" without a probe)
    label_share: float  # its share of the probe's squared standardised change, in [0, 1]
    locality: float  # median over images of the more local sign's share of change inside the region
    purity: float  # share of the probe's squared change on the region's factors (global ones for a joint region)
    alpha: float  # the strength read at, relative to ||h||
    sign: float = float("nan")  # +1 if +alpha raises the label's factor (median over images), -1 if it lowers it


def read_edits(model: DiffusionModel, x_T: torch.Tensor, vectors: torch.Tensor, regions: Sequence[str],
               masks: torch.Tensor, probe: FactorProbe | None = None,
               target: float = EvaluationSettings.target, edit: EditSettings = EditSettings(),
               num_steps: int = DEFAULT_STEPS) -> list[Reading]:
    """Edit the images with latents ``x_T`` (n, C, H, W) at +-alpha along each row of ``vectors`` (m, d) and read
    the edits of row j: label and purity (with ``probe``) for region name ``regions[j]``, and better-sign locality
    in its mask ``masks[j]`` (H, W).

    Like the evaluation, directions are compared at matched strength: a probing edit at
    ``PROBE_ALPHA`` gives each direction's RMS change, and alpha is scaled so the change would be
    ``target`` (one linear step, not the evaluation's bisection: edits are near linear at these
    strengths). Both passes run every m x n x 2 edit batched (``editing.edit_many``), applied as ``edit``
    says (the catalogue's own settings, so a reading shows what ``localedit edit`` will do).
    """
    schedule = edit.edit_schedule
    reference = to_unit(denoise(model, x_T.to(model.device), num_steps)).repeat_interleave(2, 0)
    probing = edit_many(model, x_T, vectors, [PROBE_ALPHA, -PROBE_ALPHA], schedule, num_steps)
    change = total_change(reference.expand(len(vectors), *reference.shape).flatten(0, 1),
                          probing.flatten(0, 2)).view(len(vectors), -1).mean(1)
    alphas = (PROBE_ALPHA * target / change.clamp_min(1e-12)).clamp(*edit.alpha_range)
    edited = edit_many(model, x_T, vectors, torch.stack([alphas, -alphas], 1), schedule, num_steps)
    out = []
    for region, mask, edits, alpha in zip(regions, masks, edited, alphas.tolist()):
        shares = locality(reference, edits.flatten(0, 1), mask).view(-1, 2)
        label, share, purity, sign = "", float("nan"), float("nan"), float("nan")
        if probe is not None:
            changes = factor_change(probe, reference, edits.flatten(0, 1))  # rows: (image, +alpha / -alpha)
            energy = (changes**2).sum(0)
            label = str(energy.idxmax())
            share = float(energy[label] / energy.sum()) if float(energy.sum()) > 0 else float("nan")
            purities = factor_purity(changes, region_factors(region))
            purity = float("nan") if np.isnan(purities).all() else float(np.nanmedian(purities))
            moved = changes[label].to_numpy().reshape(-1, 2)
            sign = 1.0 if np.median(moved[:, 0] - moved[:, 1]) >= 0 else -1.0
        out.append(Reading(label, share, float(shares.nan_to_num(0).amax(1).median()), purity, alpha, sign))
    return out


def closest_reference(vectors: torch.Tensor, references: Mapping[str, torch.Tensor],
                      factors: Sequence[str]) -> list[tuple[str, float]]:
    """Per direction (rows of ``vectors``, (m, d)), the reference among ``factors`` with the largest |cos|, and it."""
    names = [f for f in factors if f in references]
    if not names:
        return [("", float("nan"))] * len(vectors)
    R = torch.stack([references[f] for f in names]).to(torch.float64)
    V = torch.nn.functional.normalize(vectors.to(torch.float64), dim=1)
    cos = (V @ R.T).abs().numpy()
    best = cos.argmax(1)
    return [(names[j], float(cos[i, j])) for i, j in enumerate(best)]
