"""The per-image method: latent at t, region subspaces, JIVE into joint and individual parts.

Our extension of the paper's JIVE (on by default): each region's complement (the rest of the
image) is one more subspace, and a region's individual directions also leave out what the region
shares with its complement. At matched edit strength that makes individual directions markedly
more local on the bundled model (see ``localedit evaluate --compare``: jive_complement vs
jive_individual, the paper's form).

The pipeline (flows/mine.py) runs the same steps as separate tasks over many images; this
module is the in-memory path for one image, used by ``localedit run`` and the tests.

Two words mean one thing each, here and everywhere in localedit:

- a **block** is what gets a subspace of its own: a region, or (our extension) a region's
  complement, i.e. one of JIVE's data blocks (the run store's ``block`` dimension). The U-Net's
  own parts keep diffusers' attribute names (``mid_block``, ``up_blocks``), and the Jacobian
  engine's groups of vectors are *panels*;
- the **split** of an image is JIVE's division of its region subspaces into a joint part and
  individual parts (``Split``, ``split_subspaces``, the pipeline's split stage). Sets of images
  are *subsets* (the bundled samples' "mine" and "heldout") or *image sets* (the evaluation's
  "source" and "transfer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from localedit.core.ddim import DEFAULT_STEPS, denoise, grid_timestep, invert
from localedit.core.hspace import encode
from localedit.core.jacobian import Subspace, subspaces
from localedit.core.jive import JIVE, directions_outside, scaled_rows
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region, complement
from localedit.core.settings import MiningSettings
from localedit.utils.pixels import to_signed

DEFAULT_T = MiningSettings.t
DEFAULT_K = MiningSettings.k


@dataclass
class Latent:
    """An image's DDIM latent x_T and the point x_t on its reverse path where J is taken."""

    x_T: torch.Tensor
    x_t: torch.Tensor
    t: int


@dataclass
class Split:
    """One image's joint basis (d, r_C) and individual bases per region (d, r_a), strongest first."""

    joint: torch.Tensor
    joint_singular_values: torch.Tensor
    individual: list[torch.Tensor]
    individual_singular_values: list[torch.Tensor]
    ranks: dict

    @classmethod
    def from_jive(cls, jive: JIVE) -> "Split":
        return cls(jive.joint_basis_, jive.joint_singular_values_, list(jive.individual_bases_),
                   list(jive.individual_singular_values_), jive.ranks_)


def split_subspaces(regions: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    complements: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                    jive: dict | None = None) -> Split:
    """JIVE of one image's region subspaces ((basis, singular values) each) into joint and individual parts.

    With ``complements`` (the subspace of each region's complement), region a's individual basis
    is its part outside both the joint span and the span it shares with its complement (a
    two-block JIVE of region vs complement, ranks from the angles), so its edits stay inside it.
    """
    params = dict(jive or {})
    fit = JIVE(**params).fit([b for b, _ in regions], [s for _, s in regions])
    if complements is None:
        return Split.from_jive(fit)
    if len(complements) != len(regions):
        raise ValueError(f"{len(complements)} complement subspaces for {len(regions)} regions")
    ranks = params.get("individual_ranks")
    joint = fit.joint_basis_
    individual, individual_sv = [], []
    for a, ((V, s), (Vc, sc)) in enumerate(zip(regions, complements)):
        rank = ranks[a] if isinstance(ranks, Sequence) else ranks
        pair = JIVE(**{**params, "joint_rank": None, "individual_ranks": None if rank is None else [rank, 0]})
        own = pair.fit([V, Vc], [s, sc]).individual_bases_[0].to(joint)
        # Also outside the regions' joint span, by JIVE's own rule for individual directions.
        basis, sv = directions_outside(scaled_rows(V.to(joint), s.to(joint)), own, joint, fit.max_angle_deg)
        individual.append(basis)
        individual_sv.append(sv)
    ranks_ = {"joint": fit.ranks_["joint"], "individual": [b.shape[1] for b in individual]}
    return Split(fit.joint_basis_, fit.joint_singular_values_, individual, individual_sv, ranks_)


def complement_name(region: str) -> str:
    """The name of a region's complement block."""
    return f"not_{region}"


def complements_of(regions: Sequence[Region], size: int) -> list[Region]:
    """Each region's complement, the extra JIVE blocks of our extension."""
    return [complement([r], size, name=complement_name(r.name)) for r in regions]


@dataclass
class ImageDirections:
    regions: list[str]
    latent: Latent
    subspaces: list[Subspace]
    split: Split

    def individual(self, region: str) -> torch.Tensor:
        """The region's individual (local) basis, strongest direction first."""
        return self.split.individual[self.regions.index(region)]

    @property
    def joint(self) -> torch.Tensor:
        return self.split.joint


def latent_at(model: DiffusionModel, image: torch.Tensor | None, t: int = DEFAULT_T,
              num_steps: int = DEFAULT_STEPS, x_T: torch.Tensor | None = None) -> Latent:
    """Invert ``image`` (3, H, W in [0, 1]) to x_T (or take a given x_T), then denoise to the grid point nearest t."""
    if x_T is None:
        x_T = invert(model, to_signed(image[None].to(model.device)), num_steps)
    t_grid = grid_timestep(model, t, num_steps)
    return Latent(x_T, denoise(model, x_T, num_steps, stop_t=t_grid), t_grid)


def region_subspaces(model: DiffusionModel, latent: Latent, regions: list[Region], k: int = DEFAULT_K,
                     **options) -> list[Subspace]:
    """Top-k subspaces of every region's masked Jacobian at the latent, one linearisation for all."""
    masks = torch.stack([r.mask for r in regions]).to(model.device)
    return subspaces(model, encode(model.unet, latent.x_t, latent.t), masks, k=k, **options)


def mine_image(model: DiffusionModel, image: torch.Tensor | None, regions: list[Region], t: int = DEFAULT_T,
               k: int = DEFAULT_K, num_steps: int = DEFAULT_STEPS, jive: dict | None = None,
               x_T: torch.Tensor | None = None, complements: bool = True) -> ImageDirections:
    """Joint and individual h-space directions of the given regions on one image.

    ``jive``: ``JIVE`` settings; ``complements``: our extension (see the module docstring),
    off for the paper's form.
    """
    if len(regions) < 2:
        raise ValueError("JIVE needs at least two regions to tell joint from individual")
    latent = latent_at(model, image, t, num_steps, x_T)
    blocks = [*regions, *complements_of(regions, model.resolution)] if complements else list(regions)
    subs = region_subspaces(model, latent, blocks, k)
    pairs = [(s.basis, s.singular_values) for s in subs]
    R = len(regions)
    split = split_subspaces(pairs[:R], pairs[R:] if complements else None, jive)
    return ImageDirections([r.name for r in regions], latent, subs[:R], split)
