"""Region contrast: h-space directions whose first-order image change stays inside a region (our extension).

The paper ranks a region's directions by energy, the top right singular vectors of the masked
Jacobian J_a = d(M_a * eps)/dh, so directions that move many pixels everywhere (light, skin)
win. Region contrast instead takes the top eigenvectors of the locality-penalised operator

    C_a = sum_i J_i^T (M_a - mu (1 - M_a)) J_i,

summed over a few images i (J_i: the unmasked single-step Jacobian at image i's x_t): for a unit
v, v^T C_a v = sum_i ||J_i v||^2 (l_i(v) - mu (1 - l_i(v))), with l_i(v) the share of the change
that falls inside the region. It is positive only where l_i > mu / (1 + mu) (0.75 for mu = 3),
so energy alone no longer wins; summing over images favours directions local on all of them.
C_a is never formed: the subspaces' block Krylov engine needs only products C_a V, a panel of
tangents at a time, through a single linearisation of the U-Net's up path over all images at
once (the images are a batch, each tangent the same v for every image); see
``contrast_directions`` and ``benchmarks/RESULTS.md``.

Measured on the bundled model (``benchmarks/direction_quality.py``, edits at every reverse step,
matched strength, held-out faces): one image's mouth contrast direction has better-sign locality
0.92 and mouth-factor purity 0.90, where region variation reaches 0.29; for the eyes, 0.86 with
purity 0.62 (region variation: 0.81 / 0.88, and it is the one that opens the eyes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from localedit.core.hspace import encode
from localedit.core.jacobian import MaskedJacobian, top_eigenpairs
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region
from localedit.core.subspace import fix_signs

DEFAULT_PENALTY = 3.0
DEFAULT_CONTRAST_DIRECTIONS = 2
CONTRAST_TOL = 1e-3  # sine of the top-k span's move per iteration at which to stop: 0.06 degrees
CONTRAST_MAX_ITER = 100  # iteration cap; with a flat spectrum (a random U-Net) only converged pairs are kept
# C_a's spectrum is dominated by its negative end (-mu times the energy outside the region), so its top needs a
# deeper Krylov space than J^T J's: many thin panels (k vectors, no oversampling) and a basis of up to 64
# vectors. On this CPU a product costs the same per vector in a panel of 1 or 16, so thin panels are cheapest:
# bundled model, 4 images, k = 2: 96 products (eyes 19 iterations, mouth 29), where panels of k + 2 in a basis
# of 32 took 228 (mouth 43 iterations, 0.54 degrees from a tight solve against 0.03 now).
CONTRAST_OVERSAMPLE = 0
CONTRAST_BASIS_VECTORS = 64


def contrast_directions(model: DiffusionModel, x_t: torch.Tensor, t: int, regions: Sequence[Region],
                        k: int = DEFAULT_CONTRAST_DIRECTIONS, mu: float = DEFAULT_PENALTY,
                        tol: float = CONTRAST_TOL) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per region, the top eigenvectors (d, r) and eigenvalues (r,) of C_a over images ``x_t`` (n, C, H, W) at t,
    strongest first, signs fixed (``fix_signs``): r = k, or fewer where the iteration did not converge.

    Method (our extension; the engine is the subspaces' one, ``localedit.core.jacobian``): the
    algebraically largest eigenpairs of C_a by block Krylov with Rayleigh-Ritz
    (``top_eigenpairs``). The images are one batch (one linearisation of the U-Net's up path);
    a product C_a V = sum_i J_i^T W_a (J_i V) pushes a panel of k + ``CONTRAST_OVERSAMPLE``
    tangents through every image at once (reverse mode twice, batched with ``vmap``: no
    forward-AD lock), weights the change per region by W_a = M_a - mu (1 - M_a) and pulls it
    back summed over the images; all regions share the call, and a converged region leaves it.
    A region stops when its top-k eigenvector span moves less than ``tol`` between iterations
    (sine of the largest principal angle). If ``CONTRAST_MAX_ITER`` iterations pass first, only
    the leading pairs whose residual ||C_a x - lambda x|| is within ``tol`` of the largest
    |Ritz value| (an estimate of ||C_a||) are returned, possibly none.

    Eigenvalues are in units of the squared noise-prediction change per unit h; a negative one
    means no direction reaches the locality mu / (1 + mu) on average. Raises ValueError for mu < 0.
    """
    if mu < 0 or k < 1:
        raise ValueError(f"need mu >= 0 and k >= 1; got {mu}, {k}")
    if not regions:
        return []
    state = encode(model.unet, x_t.to(model.device), t)
    masks = torch.stack([region.mask for region in regions]).to(state.h)
    op = MaskedJacobian(model, state, masks)
    # W_a per (region, tangent, image, channel, pixel), applied once: C_a = J^T W_a J is indefinite.
    weights = (masks - mu * (1 - masks))[:, None, None, None]

    def apply(V: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return op.pull(op.push(V) * weights[active])

    panels = max(1, CONTRAST_BASIS_VECTORS // (k + CONTRAST_OVERSAMPLE))
    found = top_eigenpairs(apply, len(regions), op.dim, k, like=state.h, max_iter=CONTRAST_MAX_ITER, tol=tol,
                           oversample=CONTRAST_OVERSAMPLE, basis_panels=panels, desc="contrast")
    out = []
    for a in range(len(regions)):
        r = k if found.converged[a] else int(torch.cumprod(found.residuals[a] <= tol, 0).sum())
        out.append((fix_signs(found.vectors[a, :, :r].cpu()), found.values[a, :r].cpu()))
    return out
