"""Cut a UNet2DModel at its bottleneck ("h-space", the output of its ``mid_block``).

``encode`` runs the down path and ``mid_block`` once and caches what the up path needs (skip
features, time embedding); ``decode(h)`` then maps any h to the U-Net's output (the noise
prediction, or what ``localedit.core.parameterisation`` converts to it). The
Jacobian engine differentiates ``decode`` alone, so the down path is never re-run, and
``shift_h`` adds an edit to h inside an ordinary forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from diffusers import UNet2DModel


@dataclass
class HState:
    """The bottleneck h at (x_t, t) and the up path's other inputs."""

    h: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    emb: torch.Tensor
    timesteps: torch.Tensor

    @property
    def dim(self) -> int:
        return self.h[0].numel()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.h.shape[1:])


def _timesteps(t, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t[None]
    return (t * torch.ones(batch, dtype=t.dtype, device=device)).to(device)


@torch.no_grad()
def encode(unet: UNet2DModel, x_t: torch.Tensor, t) -> HState:
    """Down path + ``mid_block``, mirroring UNet2DModel.forward step for step."""
    sample = 2 * x_t - 1.0 if unet.config.center_input_sample else x_t
    timesteps = _timesteps(t, sample.shape[0], sample.device)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        raise ValueError("class-conditional UNet2DModels are not supported")
    skip_sample = sample
    sample = unet.conv_in(sample)
    skips = (sample,)
    for down in unet.down_blocks:
        if hasattr(down, "skip_conv"):
            sample, res, skip_sample = down(hidden_states=sample, temb=emb, skip_sample=skip_sample)
        else:
            sample, res = down(hidden_states=sample, temb=emb)
        skips += res
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, emb)
    return HState(sample, skips, emb, timesteps)


def h_shape(unet: UNet2DModel) -> tuple[int, ...]:
    """Shape of one sample's h (C, h, w), found by one down pass on a blank image."""
    size, ch = unet.config.sample_size, unet.config.in_channels
    blank = torch.zeros(1, ch, size, size, device=next(unet.parameters()).device)
    return encode(unet, blank, 0).shape


def decode(unet: UNet2DModel, h: torch.Tensor, state: HState) -> torch.Tensor:
    """Up path from h (n, C', h, w) to the U-Net's model_output (n, C, H, W); a batch of h shares a
    single-image state by broadcasting."""
    skips, emb, timesteps = state.skips, state.emb, state.timesteps
    if h.shape[0] != emb.shape[0]:
        if emb.shape[0] != 1:
            raise ValueError(f"h batch {h.shape[0]} does not match state batch {emb.shape[0]}")
        n = h.shape[0]
        skips = tuple(s.expand(n, *s.shape[1:]) for s in skips)
        emb, timesteps = emb.expand(n, -1), timesteps.expand(n)
    sample, skip_sample = h, None
    for up in unet.up_blocks:
        res, skips = skips[-len(up.resnets):], skips[: -len(up.resnets)]
        if hasattr(up, "skip_conv"):
            sample, skip_sample = up(sample, res, emb, skip_sample)
        else:
            sample = up(sample, res, emb)
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    if skip_sample is not None:
        sample = sample + skip_sample
    if unet.config.time_embedding_type == "fourier":
        sample = sample / timesteps.reshape(-1, *([1] * (sample.ndim - 1)))
    return sample


@contextmanager
def shift_h(unet: UNet2DModel, direction: torch.Tensor | None, alphas: torch.Tensor | None = None) -> Iterator[None]:
    """Add ``alpha_i * ||h_i|| * direction_i`` to each sample's h during the forward passes inside.

    ``direction``: one unit direction for every sample, shape (d,), or one per sample, (n, d)
    (many directions edited in one batch); ``alphas``: (n,). alpha is relative to the norm of h
    so that one scale means the same across models and timesteps. The hook is removed on exit,
    whatever happens inside.
    """
    if direction is None:
        yield
        return

    def hook(_module, _inputs, output):
        flat = output.flatten(1)
        scale = alphas.to(output) * flat.norm(dim=1)
        return output + scale.view(-1, 1, 1, 1) * direction.to(output).view(-1, *output.shape[1:])

    handle = unet.mid_block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
