"""Name what a direction does: the generator factor it moves most, read by the factor probe, how local
its edits are on a few images, and the supervised reference it is closest to.

A catalogue row then reads ``eyes/individual/0  eye_openness 0.81`` instead of a bare id: the
label is the factor with the largest share of the probe's predicted (standardised, squared)
change when a few images are edited at +-alpha, and the share says how pure the edit is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from localedit.ddim import DEFAULT_STEPS, EditSchedule, denoise
from localedit.editing import edit, to_unit
from localedit.metrics import locality
from localedit.models import DiffusionModel
from localedit.probe import FactorProbe, factor_change

LABEL_ALPHA = 0.2  # relative to ||h||: about the strength at which local directions reach 0.03 RMS change


@dataclass
class Reading:
    """What edits at +-alpha on a few images showed of one direction."""

    label: str  # the factor moved most ("" without a probe)
    label_share: float  # its share of the probe's squared standardised change, in [0, 1]
    locality: float  # median over images of the more local sign's share of change inside the region


def read_edits(model: DiffusionModel, x_T: torch.Tensor, vectors: torch.Tensor, masks: torch.Tensor,
               probe: FactorProbe | None = None, alpha: float = LABEL_ALPHA,
               schedule: EditSchedule = EditSchedule(), num_steps: int = DEFAULT_STEPS) -> list[Reading]:
    """Edit the images with latents ``x_T`` (n, C, H, W) at +-alpha along each row of ``vectors`` (m, d) and read
    the edits: label (with ``probe``) and better-sign locality in the direction's region ``masks[j]`` (H, W)."""
    reference = to_unit(denoise(model, x_T.to(model.device), num_steps))
    out = []
    for v, mask in zip(vectors, masks):
        edited = edit(model, None, v, [alpha, -alpha], schedule, num_steps, x_T=x_T.to(model.device))
        shares = locality(reference.repeat_interleave(2, 0), edited.flatten(0, 1), mask).view(-1, 2)
        label, share = "", float("nan")
        if probe is not None:
            energy = (factor_change(probe, reference.repeat_interleave(2, 0), edited.flatten(0, 1)) ** 2).sum(0)
            label = str(energy.idxmax())
            share = float(energy[label] / energy.sum()) if float(energy.sum()) > 0 else float("nan")
        out.append(Reading(label, share, float(shares.nan_to_num(0).amax(1).median())))
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
