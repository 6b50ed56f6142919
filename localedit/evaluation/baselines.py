"""Every method's edit directions on one image, found in one harness so they can be compared fairly.

Ours: JIVE individual (local) and joint (global) directions of the regions' masked h-space
Jacobians. Baselines people would otherwise use: the unmasked Jacobian's top direction
(global h-space edits, Park et al. / Haas et al.), a region's raw masked subspace without
JIVE (Haas et al. local), LOCO-Edit-style x-space directions (Chen et al. 2024: masked
Jacobian of the predicted x0 w.r.t. x_t, projected off the complement region's Jacobian
subspace, added to x_t at one step), and a random h direction. Our extension (the library's
default, ``localedit.core.mining.split_subspaces`` with complements) adds each region's complement
as one more JIVE block, so individual directions are also free of what the region shares with
the rest of the image.

All h-space subspaces come from one linearisation (regions, complements and whole image masks
together), so the methods see exactly the same Jacobian.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.func import vjp, vmap

from localedit.core.ddim import DEFAULT_STEPS
from localedit.core.forward_ad import jvp
from localedit.core.mining import (
    DEFAULT_K,
    DEFAULT_T,
    Latent,
    complements_of,
    latent_at,
    region_subspaces,
    split_subspaces,
)
from localedit.core.models import DiffusionModel, predicted_x0
from localedit.core.regions import Region
from localedit.core.subspace import project_out

METHODS = ("jive_individual", "jive_joint", "global", "masked", "loco_xspace", "random", "jive_complement",
           "region_variation", "region_contrast", "joint_variation")
REGION_FREE = ("jive_joint", "joint_variation", "global", "random")  # directions not tied to one region
# The methods whose directions a run's catalogue holds, and the family part of their catalogue ids
# (``eyes/contrast/0``); a run lists one of the two JIVE individual forms, as its ``complements`` says.
CATALOGUE_FAMILIES = {"region_variation": "variation", "region_contrast": "contrast", "jive_complement": "jive",
                      "jive_individual": "jive", "jive_joint": "jive", "joint_variation": "variation"}


@dataclass
class Direction:
    """A unit edit direction, flat over h ("h" space) or over x_t ("x" space, applied at timestep ``t``)."""

    id: str
    method: str
    region: str | None
    space: str
    vector: torch.Tensor
    t: int
    source: str | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.space not in ("h", "x"):
            raise ValueError(f"direction {self.id!r}: space must be 'h' or 'x', got {self.space!r}")
        v = torch.as_tensor(self.vector, dtype=torch.float32).reshape(-1).cpu()
        self.vector = v / v.norm()


def x_space_subspaces(model: DiffusionModel, x_t: torch.Tensor, t: int, masks: torch.Tensor, k: int,
                      iterations: int = 3, oversample: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors and values of d(mask * x0_hat)/dx_t for each of R masks: (R, d, k), (R, k).

    Randomised SVD with power iterations (Halko et al. 2011) on one linearisation of the whole
    U-Net; LOCO-Edit needs this Jacobian in pixel space, where the h-space engine does not apply.
    """
    R, (H, W) = masks.shape[0], masks.shape[-2:]
    d, p = x_t.numel(), k + oversample
    m = masks.to(x_t).reshape(R, 1, 1, 1, H, W)

    def f(x):
        return predicted_x0(model, x, t)

    x0, pullback = vjp(f, x_t)

    def push(V):  # (R, d, p) -> masked J V as rows (R, p, *out)
        out = vmap(lambda v: jvp(f, (x_t,), (v.view_as(x_t),))[1])(V.transpose(1, 2).reshape(R * p, d))
        return out.view(R, p, *x0.shape) * m

    def pull(U):  # (R, p, *out) -> J^T (mask * U) as (R, d, p)
        out = vmap(lambda u: pullback(u)[0].reshape(-1))((U * m).reshape(R * p, *x0.shape))
        return out.view(R, p, d).transpose(1, 2)

    g = torch.Generator().manual_seed(seed)
    V = torch.linalg.qr(torch.randn(R, d, p, generator=g).to(x_t)).Q
    for _ in range(iterations):
        V = torch.linalg.qr(pull(push(V))).Q
    Wl, S, _ = torch.linalg.svd(push(V).flatten(2), full_matrices=False)
    return (V @ Wl)[:, :, :k], S[:, :k]


def loco_directions(model: DiffusionModel, latent: Latent, regions: list[Region], k: int = DEFAULT_K,
                    **options) -> list[torch.Tensor]:
    """Per region, the top direction of its masked x0-Jacobian with the complement's top-k subspace projected out."""
    size = latent.x_t.shape[-1]
    masks = torch.stack([m for r, c in zip(regions, complements_of(regions, size)) for m in (r.mask, c.mask)])
    with torch.enable_grad():
        bases, _ = x_space_subspaces(model, latent.x_t, latent.t, masks, k, **options)
    out = []
    for a in range(len(regions)):
        v, rest = bases[2 * a][:, 0], bases[2 * a + 1]
        out.append(project_out(v, rest))
    return out


def method_directions(model: DiffusionModel, image: torch.Tensor | None, regions: list[Region], source: str,
                      t: int = DEFAULT_T, k: int = DEFAULT_K, num_steps: int = DEFAULT_STEPS, seed: int = 0,
                      x_T: torch.Tensor | None = None, jive: dict | None = None,
                      mined: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[list[Direction], Latent]:
    """The top direction of every method in ``METHODS`` on one image (3, H, W in [0, 1]), and its latent.

    Region-tied methods give one direction per region; a JIVE rank of zero gives none. ``jive``
    holds ``JIVE`` settings (default: ranks chosen from the angles), used for both JIVE fits.
    ``mined``: the (basis (d, k), singular values (k,)) of the regions, then of their complements,
    at this image's latent (as a mining run stored them), so that only the whole image's subspace
    is computed here.
    """
    if len(regions) < 2:
        raise ValueError("the comparison needs at least two regions (JIVE splits joint from individual)")
    size = model.resolution
    latent = latent_at(model, image, t, num_steps, x_T)
    whole = Region("whole", torch.ones(size, size))
    R = len(regions)
    if mined is not None and len(mined) != 2 * R:
        raise ValueError(f"mined holds {len(mined)} subspaces; give the {R} regions' and then their complements'")
    blocks = [whole] if mined is not None else [*regions, *complements_of(regions, size), whole]
    pairs = [*(mined or []), *((s.basis, s.singular_values) for s in region_subspaces(model, latent, blocks, k))]
    ours, extended = split_subspaces(pairs[:R], jive=jive), split_subspaces(pairs[:R], pairs[R:2 * R], jive)
    found: list[tuple[str, str | None, str, torch.Tensor]] = []
    for a, region in enumerate(regions):
        for method, basis in (("jive_individual", ours.individual[a]),
                              ("jive_complement", extended.individual[a]),
                              ("masked", pairs[a][0])):
            if basis.shape[1]:
                found.append((method, region.name, "h", basis[:, 0]))
    if ours.joint.shape[1]:
        found.append(("jive_joint", None, "h", ours.joint[:, 0]))
    found.append(("global", None, "h", pairs[2 * R][0][:, 0]))
    for region, v in zip(regions, loco_directions(model, latent, regions, k, seed=seed)):
        found.append(("loco_xspace", region.name, "x", v))
    g = torch.Generator().manual_seed(seed)
    found.append(("random", None, "h", torch.randn(pairs[0][0].shape[0], generator=g)))
    info = {"jive_ranks": ours.ranks, "jive_complement_ranks": extended.ranks}
    directions = [Direction(f"{source}:{method}:{region or 'all'}", method, region, space, v, latent.t, source, info)
                  for method, region, space, v in found]
    return directions, latent
