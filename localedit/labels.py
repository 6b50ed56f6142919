"""Name what a direction does: the generator factor it moves most, read by the factor probe, and the
supervised reference it is closest to.

A catalogue row then reads ``eyes/individual/0  eye_openness 0.81`` instead of a bare id: the
label is the factor with the largest share of the probe's predicted (standardised, squared)
change when a few images are edited at +-alpha, and the share says how pure the edit is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from localedit.ddim import EditSchedule, denoise
from localedit.editing import edit, to_unit
from localedit.models import DiffusionModel
from localedit.probe import FactorProbe, factor_change

LABEL_ALPHA = 0.2  # relative to ||h||: about the strength at which local directions reach 0.03 RMS change


def probe_labels(model: DiffusionModel, probe: FactorProbe, x_T: torch.Tensor, vectors: torch.Tensor,
                 alpha: float = LABEL_ALPHA, schedule: EditSchedule = EditSchedule()) -> list[tuple[str, float]]:
    """Per direction (rows of ``vectors``, (m, d)), the factor it moves most and that factor's share in [0, 1].

    ``x_T``: (n, C, H, W) DDIM latents of the images edited at +-alpha; their unedited decodings are the reference.
    """
    reference = to_unit(denoise(model, x_T.to(model.device))).repeat_interleave(2, 0)
    out = []
    for v in vectors:
        edited = edit(model, None, v, [alpha, -alpha], schedule, x_T=x_T.to(model.device)).flatten(0, 1)
        energy = (factor_change(probe, reference, edited) ** 2).sum(0)
        total = float(energy.sum())
        name = str(energy.idxmax())
        out.append((name, float(energy[name] / total) if total > 0 else float("nan")))
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
