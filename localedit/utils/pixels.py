"""The two pixel ranges: images people load and save are in [0, 1]; the diffusion model works in [-1, 1]."""

from __future__ import annotations

import torch


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the model's range [-1, 1] (same shape, device and dtype)."""
    return images * 2 - 1


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model images in [-1, 1] -> images in [0, 1] on the CPU (clamped first: what users see and save)."""
    return ((x.clamp(-1, 1) + 1) / 2).cpu()
