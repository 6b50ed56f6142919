"""Top-k right singular vectors of region-masked Jacobians d(mask * eps)/dh, matrix-free.

Block subspace iteration on J_a^T J_a: each iteration pushes all regions' blocks through
one batched JVP (``vmap`` over ``jvp``) and one batched VJP through a single reused
linearisation, then orthonormalises per region. The unmasked product J V is shared by every
region (only the mask differs), so R regions cost one stack of tangents, not R passes. A
Rayleigh-Ritz step on the final block gives ordered singular vectors and values. The
Jacobian (output size x h-dimension) is never formed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp, vmap
from tqdm.auto import tqdm

from localedit.hspace import HState, decode
from localedit.models import DiffusionModel


@dataclass
class Subspace:
    """Top-k right singular vectors (columns of ``basis``, flat over h) of one masked Jacobian."""

    basis: torch.Tensor
    singular_values: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    seconds: float


def _orthonormal(blocks: torch.Tensor) -> torch.Tensor:
    """QR per block: (R, d, k) -> orthonormal columns."""
    return torch.linalg.qr(blocks).Q


def _sin_max_angle(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Sine of the largest principal angle between spans, per block."""
    resid = new - old @ (old.transpose(1, 2) @ new)
    return torch.linalg.matrix_norm(resid, ord=2).clamp(max=1.0)


class MaskedJacobian:
    """Products with J_a = d(mask_a * eps)/dh at one (x_t, t) for several masks at once."""

    def __init__(self, model: DiffusionModel, state: HState, masks: torch.Tensor):
        if state.h.shape[0] != 1:
            raise ValueError("subspaces are computed one image at a time (state batch must be 1)")
        self.unet = model.unet
        self.state = state
        self.masks = masks.to(state.h).reshape(masks.shape[0], 1, 1, *masks.shape[-2:])
        self.h = state.h
        eps, self._vjp = vjp(self._f, self.h)
        self.out_shape = eps.shape
        self.dim = self.h.numel()

    def _f(self, h: torch.Tensor) -> torch.Tensor:
        return decode(self.unet, h, self.state)

    def _jvp_one(self, v: torch.Tensor) -> torch.Tensor:
        return jvp(self._f, (self.h,), (v.view_as(self.h),))[1]

    def _vjp_one(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u)[0].reshape(-1)

    def jvp(self, V: torch.Tensor) -> torch.Tensor:
        """(R, d, k) -> masked outputs (R, k, *out): region a's block sees mask a."""
        R, d, k = V.shape
        out = vmap(self._jvp_one)(V.transpose(1, 2).reshape(R * k, d))
        return out.view(R, k, *self.out_shape) * self.masks.unsqueeze(1)

    def vjp(self, U: torch.Tensor) -> torch.Tensor:
        """(R, k, *out) -> J_a^T U_a as (R, d, k); the mask is applied here too (soft masks square)."""
        R, k = U.shape[:2]
        U = U * self.masks.unsqueeze(1)
        out = vmap(self._vjp_one)(U.reshape(R * k, *self.out_shape))
        return out.view(R, k, -1).transpose(1, 2)


def subspaces(
    model: DiffusionModel,
    state: HState,
    masks: torch.Tensor,
    k: int = 8,
    max_iter: int = 30,
    tol: float = 1e-3,
    oversample: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> list[Subspace]:
    """Top-k subspace of each masked Jacobian (masks: (R, H, W) in {0, 1}), sharing one linearisation.

    Iterates on k + ``oversample`` vectors (faster convergence when s_k ~ s_{k+1}) until the
    top-k Ritz subspace of every region moves less than ``tol`` (sine of the largest principal
    angle between successive iterates) or ``max_iter`` is reached.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (regions, H, W), got {tuple(masks.shape)}")
    start = time.perf_counter()
    op = MaskedJacobian(model, state, masks)
    R, d, p = masks.shape[0], op.dim, min(k + oversample, op.dim)
    if k > d:
        raise ValueError(f"k={k} exceeds the h-space dimension {d}")
    g = torch.Generator().manual_seed(seed)
    V = _orthonormal(torch.randn(R, d, p, generator=g).to(state.h))
    top = torch.zeros(R, d, k).to(V)
    done = torch.zeros(R, dtype=torch.bool)
    iters = torch.zeros(R, dtype=torch.long)
    residual = torch.full((R,), float("nan"))
    bar = tqdm(range(max_iter), desc="subspace", disable=not progress, leave=False)
    for it in bar:
        Y = op.jvp(V)
        # Rayleigh-Ritz on span(V): SVD of the masked image of the block orders the directions.
        # Y holds one output per row, so its left singular vectors rotate V into Ritz vectors.
        W, S, _ = torch.linalg.svd(Y.flatten(2), full_matrices=False)
        ritz = V @ W
        Z = op.vjp(Y) @ W  # J^T J applied to the Ritz vectors
        res = torch.linalg.vector_norm(Z - ritz * S.unsqueeze(1) ** 2, dim=1)[:, :k]
        residual = (res.max(1).values / S[:, :1].squeeze(1).clamp_min(1e-30) ** 2).cpu()
        new_top = ritz[:, :, :k]
        change = _sin_max_angle(top, new_top).cpu() if it else torch.ones(R)
        newly = (change < tol) & ~done
        iters[~done] = it + 1
        done |= newly
        top = new_top
        bar.set_postfix(change=f"{change.max():.1e}")
        if bool(done.all()):
            break
        V = _orthonormal(Z)
    seconds = time.perf_counter() - start
    # ``top`` and ``S`` come from the same Rayleigh-Ritz step, so values match vectors.
    return [
        Subspace(top[a], S[a, :k].clone(), int(iters[a]), float(residual[a]), bool(done[a]), seconds)
        for a in range(R)
    ]


def exact_jacobian(model: DiffusionModel, state: HState, mask: torch.Tensor) -> torch.Tensor:
    """The full masked Jacobian (out x d). Tests and small-model references only."""
    op = MaskedJacobian(model, state, mask[None])
    eye = torch.eye(op.dim).to(state.h)
    return op.jvp(eye[None]).reshape(op.dim, -1).T
