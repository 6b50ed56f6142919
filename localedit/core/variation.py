"""Region variation: local edit directions from how h varies across images inside a region (our extension).

Why not the Jacobian's top singular vectors: on the bundled model they rank directions by how
many pixels they move in the region, i.e. skin tone and light, which move everything else too
(eyes individual locality 0.32 at matched strength). A supervised twin direction (faces that
differ only in eye openness) edits the eyes alone (locality 0.92) and is *spatially* local in
h-space: 77% of its energy lies in the h cells above the eyes box. Its gain under the
single-step Jacobian is only 3-4x a random direction's, so energy ranking cannot find it, and a
locality-penalised Jacobian eigenproblem finds many first-order-local directions that do not
open the eyes (measured in ``benchmarks/direction_quality.py``).

What does find it is the data: the eye-openness direction is a main axis along which the
model's h varies from face to face *inside the eyes cells* once the variation explained by the
rest of h is removed. For region a with h-cells C_a (the bottleneck positions the region's mask
touches) and images i = 1..n with centred bottleneck features H (n, d):

1. Z = top ``complement_rank`` left singular vectors of H restricted to the cells outside C_a:
   the image-level factors visible outside the region (lighting, skin tone, warmth, ...).
2. X_a = (I - Z Z^T) H restricted to C_a: the region's variation that the outside does not
   explain, which is JIVE's individual variation of the region block in the original sense of
   Lock et al. (2013), with images as the shared samples.
3. The right singular vectors of X_a, strongest first, are the region's individual directions;
   their squared singular values / n are the variances along them.

On the bundled model, from the 24 bundled mining images at t = 500, the top eyes direction has
|cos| 0.69 with the supervised eye-openness direction (the paper's top JIVE individual
direction: 0.13-0.36), and it opens closed eyes.

The *joint* variation is the other half of that split: the principal axes of the images' whole
h (every cell), i.e. the leading components of the concatenated blocks, which JIVE's joint
structure estimates (Lock et al. 2013). They are the factors every region moves with, the
global edits: on the bundled model the top one moves mostly global generator factors (face
width, lighting; global-factor share 0.67 on two images at matched strength), where the
paper's JIVE joint direction moves mostly skin tone (0.36).

Edits with these directions should be applied at every reverse step (``EditSchedule("all")``):
added only at t >= 500 the same direction is far less local (0.27 vs 0.76 on four held-out
images; the supervised direction: 0.29 vs 0.92).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from localedit.core.ddim import DEFAULT_STEPS, denoise
from localedit.core.hspace import encode
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region
from localedit.core.subspace import fix_signs, project_out

DEFAULT_COMPLEMENT_RANK = 8
DEFAULT_DIRECTIONS = 8


def h_cells(mask: torch.Tensor, h_shape: Sequence[int]) -> torch.Tensor:
    """Flat 0/1 indicator (d,) of the h positions whose patch of pixels touches ``mask`` (H, W).

    h has shape (C, h, w) with h, w a power-of-two fraction of the image; a cell belongs to the
    region when any pixel of its patch does (adaptive max pooling), for every channel.
    """
    channels, height, width = h_shape
    pooled = F.adaptive_max_pool2d(torch.as_tensor(mask, dtype=torch.float32)[None, None], (height, width))[0, 0]
    return (pooled > 0).to(torch.float32).expand(channels, height, width).reshape(-1)


class RegionVariation:
    """Per-region individual directions of h's variation across images (scikit-learn-style estimator).

    Parameters
    ----------
    n_directions : directions kept per region (fewer when the data has fewer).
    complement_rank : image-level factors removed, read from h outside the region's cells; must
        be below the number of images minus one.

    Attributes after ``fit``
    ------------------------
    directions_ : list of (d, r_a) float32 tensors, orthonormal columns, strongest first, signs
        fixed (largest-magnitude entry positive), one per region.
    variances_ : list of (r_a,) float32 tensors: variance of the images' residual h along each
        direction (units of h squared).
    joint_directions_ : (d, r) float32, orthonormal columns, strongest first, signs fixed: the
        principal axes of the images' whole h (the variation all regions share: global edits).
    joint_variances_ : (r,) float32: the images' variance of h along each joint direction.
    cells_ : (R, d) 0/1 indicators of each region's h cells.
    n_images_ : images the fit used.
    """

    def __init__(self, n_directions: int = DEFAULT_DIRECTIONS, complement_rank: int = DEFAULT_COMPLEMENT_RANK):
        self.n_directions = n_directions
        self.complement_rank = complement_rank

    @property
    def min_images(self) -> int:
        """Fewest images a fit accepts: the removed outside factors plus two."""
        return self.complement_rank + 2

    def get_params(self) -> dict:
        return {"n_directions": self.n_directions, "complement_rank": self.complement_rank}

    def fit(self, h: torch.Tensor, regions: Sequence[Region]) -> "RegionVariation":
        """Fit on bottleneck features ``h`` (n, C, h, w) of n images and the regions' masks (H, W).

        Raises ValueError for too few images, a region covering no cell or every cell, or bad settings.
        """
        if self.n_directions < 1 or self.complement_rank < 0:
            raise ValueError(f"need n_directions >= 1 and complement_rank >= 0; "
                             f"got {self.n_directions}, {self.complement_rank}")
        if h.ndim != 4:
            raise ValueError(f"h must be (images, C, h, w), got shape {tuple(h.shape)}")
        n = h.shape[0]
        if n < self.min_images:
            raise ValueError(f"region variation needs at least complement_rank + 2 = {self.min_images} "
                             f"images; got {n}")
        H = h.flatten(1).to(torch.float64)
        H = H - H.mean(0)
        self.cells_ = torch.stack([h_cells(r.mask, h.shape[1:]) for r in regions]).to(H)
        self.joint_directions_, self.joint_variances_ = self._principal_axes(H, n)
        self.directions_, self.variances_ = [], []
        for region, cells in zip(regions, self.cells_):
            if not 0 < cells.sum() < cells.numel():
                raise ValueError(f"region {region.name!r} covers {'no' if cells.sum() == 0 else 'every'} "
                                 f"h cell; its variation cannot be told from the rest")
            outside = torch.linalg.svd(H * (1 - cells), full_matrices=False).U[:, : self.complement_rank]
            inside = H * cells
            directions, variances = self._principal_axes(project_out(inside, outside), n)
            self.directions_.append(directions)
            self.variances_.append(variances)
        self.n_images_ = n
        return self

    def _principal_axes(self, X: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n_directions`` right singular vectors (d, r) of X (n, d) with non-negligible singular values,
        signs fixed, and the variances (r,) along them."""
        _, sigma, Vh = torch.linalg.svd(X, full_matrices=False)
        keep = sigma > sigma[0] * 1e-6 if len(sigma) and sigma[0] > 0 else torch.zeros_like(sigma, dtype=torch.bool)
        r = min(self.n_directions, int(keep.sum()))
        return fix_signs(Vh[:r].T).float(), (sigma[:r] ** 2 / max(n - 1, 1)).float()


def fit_region_variation(model: DiffusionModel, x_T: torch.Tensor, regions: Sequence[Region], t: int,
                         num_steps: int = DEFAULT_STEPS, **params) -> RegionVariation:
    """Region variation over images given by their DDIM latents ``x_T`` (n, C, H, W): h at the grid step nearest t."""
    x_t = denoise(model, x_T.to(model.device), num_steps, stop_t=t)
    return RegionVariation(**params).fit(encode(model.unet, x_t, t).h.cpu(), regions)
