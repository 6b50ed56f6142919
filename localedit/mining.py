"""The per-image method: latent at t, region subspaces, JIVE into joint and individual parts.

The pipeline (flows/mine.py) runs the same steps as separate tasks over many images; this
module is the in-memory path for one image, used by ``localedit run`` and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localedit.ddim import DEFAULT_STEPS, denoise, grid_timestep, invert
from localedit.hspace import encode
from localedit.jacobian import Subspace, subspaces
from localedit.jive import JIVE
from localedit.models import DiffusionModel
from localedit.regions import Region

DEFAULT_T = 500
DEFAULT_K = 8


@dataclass
class Latent:
    """An image's DDIM latent x_T and the point x_t on its reverse path where J is taken."""

    x_T: torch.Tensor
    x_t: torch.Tensor
    t: int


@dataclass
class ImageDirections:
    regions: list[str]
    latent: Latent
    subspaces: list[Subspace]
    jive: JIVE

    def individual(self, region: str) -> torch.Tensor:
        """The region's individual (local) basis, strongest direction first."""
        return self.jive.individual_bases_[self.regions.index(region)]

    @property
    def joint(self) -> torch.Tensor:
        return self.jive.joint_basis_


def latent_at(model: DiffusionModel, image: torch.Tensor | None, t: int = DEFAULT_T,
              num_steps: int = DEFAULT_STEPS, x_T: torch.Tensor | None = None) -> Latent:
    """Invert ``image`` (3, H, W in [0, 1]) to x_T (or take a given x_T), then denoise to the grid point nearest t."""
    if x_T is None:
        x_T = invert(model, image[None].to(model.device) * 2 - 1, num_steps)
    t_grid = grid_timestep(model, t, num_steps)
    return Latent(x_T, denoise(model, x_T, num_steps, stop_t=t_grid), t_grid)


def region_subspaces(model: DiffusionModel, latent: Latent, regions: list[Region], k: int = DEFAULT_K,
                     **options) -> list[Subspace]:
    """Top-k subspaces of every region's masked Jacobian at the latent, one linearisation for all."""
    masks = torch.stack([r.mask for r in regions]).to(model.device)
    return subspaces(model, encode(model.unet, latent.x_t, latent.t), masks, k=k, **options)


def mine_image(model: DiffusionModel, image: torch.Tensor | None, regions: list[Region], t: int = DEFAULT_T,
               k: int = DEFAULT_K, num_steps: int = DEFAULT_STEPS, jive: JIVE | None = None,
               x_T: torch.Tensor | None = None) -> ImageDirections:
    """Joint and individual h-space directions of the given regions on one image."""
    if len(regions) < 2:
        raise ValueError("JIVE needs at least two regions to tell joint from individual")
    latent = latent_at(model, image, t, num_steps, x_T)
    subs = region_subspaces(model, latent, regions, k)
    jive = (jive or JIVE()).fit([s.basis for s in subs], [s.singular_values for s in subs])
    return ImageDirections([r.name for r in regions], latent, subs, jive)
