"""Procedural aligned faces whose generative factors are known.

The bundled model is trained on these, so every edit can be checked against ground truth:
each factor is labelled with the region it acts on, and some factors are deliberately
*global* (lighting, warmth, expression, face width) so that region subspaces share
structure for JIVE to separate.

Geometry is written in relative coordinates (0..1), so any resolution renders the same face;
the layout matches the region presets in ``data/regions.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

GENERATOR_VERSION = "faces-1"

# Which region each factor acts on; "global" factors touch several regions at once.
FACTOR_SCOPE: dict[str, str] = {
    "background_hue": "background",
    "skin_tone": "face",
    "hair_color": "hair",
    "fringe": "hair",
    "eye_openness": "eyes",
    "iris_color": "eyes",
    "mouth_curvature": "mouth",
    "mouth_openness": "mouth",
    "lip_redness": "mouth",
    "expression": "global",
    "lighting": "global",
    "light_direction": "global",
    "warmth": "global",
    "face_width": "global",
}
FACTORS = list(FACTOR_SCOPE)
GLOBAL_SCOPE = "global"
# Sub-regions whose factors are the parent's.
REGION_SCOPE = {"left_eye": "eyes", "right_eye": "eyes"}

_SKIN = torch.tensor([[0.96, 0.80, 0.69], [0.87, 0.65, 0.50], [0.62, 0.42, 0.30], [0.40, 0.26, 0.18]])
_HAIR = torch.tensor([[0.08, 0.06, 0.05], [0.35, 0.20, 0.10], [0.85, 0.70, 0.35], [0.70, 0.25, 0.10], [0.70, 0.70, 0.72]])
_IRIS = torch.tensor([[0.35, 0.20, 0.08], [0.20, 0.45, 0.85], [0.20, 0.60, 0.30], [0.45, 0.50, 0.55]])
_LIP_PALE = torch.tensor([0.80, 0.55, 0.55])
_LIP_RED = torch.tensor([0.80, 0.08, 0.15])

EYE_Y = 0.42
EYE_SEPARATION = 0.17
MOUTH_Y = 0.74
CLOSED_EYE = 0.12  # openness below which an eye is drawn as a closed line


@dataclass
class FaceBatch:
    """Images in [0, 1], shape (n, 3, size, size), with one factor-table row per image."""

    images: torch.Tensor
    factors: pd.DataFrame


def _palette(colors: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along a palette, index in [0, len-1]."""
    lo = index.floor().clamp(0, len(colors) - 1).long()
    hi = (lo + 1).clamp(max=len(colors) - 1)
    w = (index - lo).unsqueeze(-1)
    return colors[lo] * (1 - w) + colors[hi] * w


def sample_factors(n: int, seed: int = 0) -> pd.DataFrame:
    """Draw n factor rows; both open and closed eyes and every expression occur."""
    rng = np.random.default_rng(seed)
    expression = rng.uniform(-1, 1, n)
    base_open = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.45, 1.0, n))
    # A broad smile squints: expression couples the eyes and the mouth.
    eye_open = base_open * (1 - 0.45 * np.clip(expression, 0, None))
    local_curve = rng.uniform(-1, 1, n)
    return pd.DataFrame(
        {
            "background_hue": rng.uniform(0, 1, n),
            "skin_tone": rng.uniform(0, len(_SKIN) - 1, n),
            "hair_color": rng.uniform(0, len(_HAIR) - 1, n),
            "fringe": rng.uniform(0, 1, n),
            "eye_openness": eye_open,
            "iris_color": rng.uniform(0, len(_IRIS) - 1, n),
            "mouth_curvature": np.clip(0.7 * expression + 0.4 * local_curve, -1, 1),
            "mouth_openness": np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 1, n)),
            "lip_redness": rng.uniform(0, 1, n),
            "expression": expression,
            "lighting": rng.uniform(-1, 1, n),
            "light_direction": rng.uniform(-1, 1, n),
            "warmth": rng.uniform(-1, 1, n),
            "face_width": rng.uniform(-1, 1, n),
            "jitter_x": rng.uniform(-1, 1, n),
            "jitter_y": rng.uniform(-1, 1, n),
        }
    )


def _soft(signed_distance: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage of the region where the signed distance is negative."""
    return torch.sigmoid(-signed_distance / (0.5 * pixel))


def render(factors: pd.DataFrame, size: int = 32) -> torch.Tensor:
    """Render factor rows into images (n, 3, size, size) in [0, 1]; deterministic."""
    f = {k: torch.tensor(factors[k].to_numpy(), dtype=torch.float32)[:, None, None] for k in factors.columns}
    n = len(factors)
    px = 1.0 / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    u, v = u[None], v[None]

    width = 1 + 0.1 * f["face_width"]
    cx = 0.5 + 0.02 * f["jitter_x"]
    cy = 0.02 * f["jitter_y"]

    def paint(canvas: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        return canvas * (1 - alpha[:, None]) + color.view(n, 3, 1, 1) * alpha[:, None]

    hue = f["background_hue"].view(n) * 2 * np.pi
    bg = 0.55 + 0.2 * torch.stack([torch.cos(hue), torch.cos(hue - 2.1), torch.cos(hue + 2.1)], 1)
    img = bg.view(n, 3, 1, 1).expand(n, 3, size, size).clone()

    # Face and hair.
    frx, fry, fcy = 0.34 * width, 0.42, 0.56 + cy
    face_d = ((u - cx) / frx) ** 2 + ((v - fcy) / fry) ** 2 - 1
    hair_d = ((u - cx) / (frx + 0.05)) ** 2 + ((v - fcy + 0.04) / (fry + 0.06)) ** 2 - 1
    fringe_y = 0.16 + 0.14 * f["fringe"] + cy + 0.015 * torch.sin(u * 40)
    img = paint(img, _soft(face_d * 0.15, px), _palette(_SKIN, f["skin_tone"].view(n)))
    hair = _soft(hair_d * 0.15, px) * torch.maximum(_soft(v - fringe_y, px), 1 - _soft(face_d * 0.15, px))
    hair = hair * _soft(v - (0.55 + cy), px)
    img = paint(img, hair, _palette(_HAIR, f["hair_color"].view(n)))

    # Eyes: white ellipse whose height follows openness, iris and pupil clipped to it.
    openness = f["eye_openness"]
    open_mask = (openness > CLOSED_EYE).float()
    ey = EYE_Y + cy
    iris_rgb = _palette(_IRIS, f["iris_color"].view(n))
    for side in (-1, 1):
        ex = cx + side * EYE_SEPARATION * width
        erx, ery = 0.075, 0.085 * openness.clamp(min=1e-3)
        white_d = (((u - ex) / erx) ** 2 + ((v - ey) / ery) ** 2 - 1) * ery.clamp(max=0.05)
        white = _soft(white_d, px) * open_mask
        img = paint(img, white, torch.tensor([0.97, 0.97, 0.97]).expand(n, 3))
        iris = _soft(torch.sqrt((u - ex) ** 2 + (v - ey) ** 2) - 0.045, px) * white
        img = paint(img, iris, iris_rgb)
        pupil = _soft(torch.sqrt((u - ex) ** 2 + (v - ey) ** 2) - 0.018, px) * white
        img = paint(img, pupil, torch.zeros(n, 3))
        lid = _soft(torch.maximum(torch.abs(v - ey) - 0.018, torch.abs(u - ex) - erx), px) * (1 - open_mask)
        img = paint(img, lid, torch.tensor([0.15, 0.08, 0.06]).expand(n, 3))

    # Mouth: a lip band around a parabola whose sign is the curvature; dark inside when open.
    mw = 0.13 * width
    my = MOUTH_Y + cy
    t = ((u - cx) / mw).clamp(-1.2, 1.2)
    line = my - 0.07 * f["mouth_curvature"] * (t**2 - 0.5)
    span = torch.sqrt((1 - t**2).clamp(min=0))
    gap = 0.045 * f["mouth_openness"] * span
    lip_half = 0.022 + gap
    inside_x = _soft(torch.abs(u - cx) - mw, px)
    lips = _soft(torch.abs(v - line) - lip_half, px) * inside_x
    lip_rgb = _LIP_PALE * (1 - f["lip_redness"].view(n, 1)) + _LIP_RED * f["lip_redness"].view(n, 1)
    img = paint(img, lips, lip_rgb)
    img = paint(img, _soft(torch.abs(v - line) - gap + 0.5 * px, px) * inside_x * (gap > 0.25 * px), torch.tensor([0.25, 0.05, 0.08]).expand(n, 3))

    # Global light: level, a left-right gradient, and colour temperature over the whole face.
    head = torch.maximum(_soft(face_d * 0.15, px), hair)[:, None]
    gain = 1 + 0.22 * f["lighting"] + 0.25 * f["light_direction"] * (u - 0.5) * 2
    warm = torch.stack([0.08 * f["warmth"], 0 * f["warmth"], -0.08 * f["warmth"]], 1)
    lit = img * gain[:, None] + warm
    img = img * (1 - head) + lit * head
    return img.clamp(0, 1)


def sample_faces(n: int, seed: int = 0, size: int = 32) -> FaceBatch:
    """Seeded faces with their factor table; the same seed always gives the same batch."""
    factors = sample_factors(n, seed)
    return FaceBatch(render(factors, size), factors)
