"""Directions many images share: the consensus of per-image subspaces (our addition to the paper).

The paper finds joint and individual directions one image at a time; a catalogue needs
directions that do the same thing on many images. For one region (or for the joint part),
image i contributes its basis B_i (d, r_i) and singular values s_i, scaled to unit energy:
W_i = B_i diag(s_i) / ||s_i||. The left singular vectors u_j of [W_1 ... W_n] carry the most
energy summed over images, and sigma_j^2 / n is the mean share of an image's energy along u_j
(reported as its square root, so 1 means "all of every image's energy"). Each u_j is then
scored against the unweighted subspaces:

- consistency = mean_i ||B_i^T u_j||^2, the squared cosine to each image's subspace,
  averaged (1 when u_j lies in every image's subspace, about r/d by chance);
- support = #{i : ||B_i^T u_j||^2 >= threshold}, how many images contain it.

Singular value weighting matters as in JIVE: with bare orthonormal bases every direction of
an image counts alike, and the strongest shared direction would be arbitrary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from localedit.core.subspace import fix_signs


@dataclass
class Consensus:
    """Shared directions (d, m), strongest first, with their scores (m,) over ``n_images`` images."""

    directions: torch.Tensor
    singular_values: torch.Tensor
    consistency: torch.Tensor
    support: torch.Tensor
    n_images: int


def consensus(bases: Sequence[torch.Tensor], singular_values: Sequence[torch.Tensor], max_directions: int,
              threshold: float = 0.5, min_support: int = 1) -> Consensus:
    """Up to ``max_directions`` directions contained (squared cosine >= threshold) in >= min_support images.

    ``bases`` are per-image orthonormal (d, r_i), possibly with r_i = 0; ``singular_values`` (r_i,).
    """
    if len(bases) == 0 or len(bases) != len(singular_values):
        raise ValueError(f"need one singular-value vector per basis and at least one image; "
                         f"got {len(bases)} bases and {len(singular_values)} singular-value vectors")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a squared cosine in (0, 1]; got {threshold}")
    if min_support < 1 or max_directions < 0:
        raise ValueError(f"need min_support >= 1 and max_directions >= 0; got {min_support}, {max_directions}")
    d = bases[0].shape[0]
    B = [torch.as_tensor(b, dtype=torch.float64) for b in bases]
    s = [torch.as_tensor(v, dtype=torch.float64) for v in singular_values]
    for i, (b, v) in enumerate(zip(B, s)):
        if b.ndim != 2 or b.shape[0] != d or v.shape != (b.shape[1],):
            raise ValueError(f"image {i}: basis {tuple(b.shape)} and singular values {tuple(v.shape)} "
                             f"do not match (expected ({d}, r) and (r,))")
    weighted = [b * (v / v.norm()) for b, v in zip(B, s) if b.shape[1] and v.norm() > 0]
    n = len(B)
    if not weighted:
        empty = torch.zeros(0)
        return Consensus(torch.zeros(d, 0), empty, empty, empty.long(), n)
    u, sigma, _ = torch.linalg.svd(torch.cat(weighted, dim=1), full_matrices=False)
    keep = sigma > sigma[0] * 1e-6
    u, sigma = u[:, keep], sigma[keep]
    cos2 = torch.stack([(b.T @ u).pow(2).sum(0) for b in B])  # (n, m)
    support = (cos2 >= threshold).sum(0)
    chosen = torch.nonzero(support >= min_support).flatten()[:max_directions]
    return Consensus(
        fix_signs(u[:, chosen]).float(),
        (sigma[chosen] / n**0.5).float(),
        cos2[:, chosen].mean(0).float(),
        support[chosen],
        n,
    )
