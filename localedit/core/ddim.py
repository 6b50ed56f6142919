"""Deterministic DDIM: invert real images to x_T, denoise (optionally with an h-space edit).

Timesteps follow diffusers' DDIM grid (e.g. 980, 960, ..., 0 for 50 steps). "x at timestep
tau" is the latent *before* the reverse step at tau, which is also what inversion reaches
after its step at tau, so the two directions meet on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from tqdm.auto import tqdm

from localedit.core.hspace import shift_h
from localedit.core.models import DiffusionModel, prediction_type
from localedit.core.settings import EditSettings, MiningSettings, check_schedule

DEFAULT_STEPS = MiningSettings.num_steps


@dataclass(frozen=True)
class EditSchedule:
    """Which reverse steps get the h-space edit.

    ``"from_t_edit"`` edits while t >= t_edit (Asyrp-style: coarse steps carry the semantic
    change, late steps restore detail); ``"all"`` edits every step (defaults: ``EditSettings``). On the bundled
    velocity model, at matched strength on held-out faces, the supervised eye-opening direction
    is local 0.92 edited at every step and 0.29 from t_edit = 500; the region-variation eyes
    direction 0.76 vs 0.27 (``benchmarks/direction_quality.py``). (A first experiment on an
    under-trained epsilon model had found from_t_edit most local.)
    """

    kind: str = EditSettings.schedule
    t_edit: int = EditSettings.t_edit

    def __post_init__(self):
        check_schedule(self.kind)

    def active(self, t: int) -> bool:
        return self.kind == "all" or t >= self.t_edit


@dataclass
class Edit:
    """A unit h-space direction, (d,), or one per batch element, (n, d), and one relative strength per batch
    element, (n,)."""

    direction: torch.Tensor
    alphas: torch.Tensor
    schedule: EditSchedule = field(default_factory=EditSchedule)


def _check_images(model: DiffusionModel, x: torch.Tensor) -> None:
    size = model.resolution
    if x.ndim != 4 or x.shape[1] != model.unet.config.in_channels or tuple(x.shape[2:]) != (size, size):
        raise ValueError(
            f"expected images of shape (n, {model.unet.config.in_channels}, {size}, {size}) for this model, "
            f"got {tuple(x.shape)}"
        )


def timesteps(model: DiffusionModel, num_steps: int = DEFAULT_STEPS) -> list[int]:
    """The reverse-process grid, descending."""
    sched = DDIMScheduler.from_config(model.scheduler.config, clip_sample=False)
    sched.set_timesteps(num_steps)
    return [int(t) for t in sched.timesteps]


def grid_timestep(model: DiffusionModel, t: int, num_steps: int = DEFAULT_STEPS) -> int:
    """The grid timestep nearest to t (the Jacobian is taken where the sampler actually is)."""
    return min(timesteps(model, num_steps), key=lambda s: (abs(s - t), s))


@torch.no_grad()
def invert(model: DiffusionModel, x0: torch.Tensor, num_steps: int = DEFAULT_STEPS, progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1] -> x_T by deterministic DDIM inversion (no clipping).

    The first step starts from alpha_bar = 1, where a clean-image ("sample") prediction implies
    no noise estimate (0 / 0); such models start from the schedule's first alpha_bar instead.
    """
    _check_images(model, x0)
    sched = DDIMInverseScheduler.from_config(model.scheduler.config, clip_sample=False,
                                             set_alpha_to_one=prediction_type(model) != "sample")
    sched.set_timesteps(num_steps)
    x = x0.to(model.device)
    for t in tqdm(sched.timesteps, desc="invert", disable=not progress, leave=False):
        x = sched.step(model.unet(x, t).sample, t, x).prev_sample
    return x


@torch.no_grad()
def denoise(
    model: DiffusionModel,
    x: torch.Tensor,
    num_steps: int = DEFAULT_STEPS,
    start_t: int | None = None,
    stop_t: int | None = None,
    edit: Edit | None = None,
    progress: bool = False,
    clip_sample: bool = False,
) -> torch.Tensor:
    """Run the reverse process from x at ``start_t`` (default T) down to x at ``stop_t`` (default 0 = images).

    ``clip_sample`` clips each step's x0 prediction to [-1, 1]. Sampling from pure noise needs
    it (a small model's x0 error at high t is amplified ~150x and the path diverges without
    it); the reverse pass of an *inverted* latent must not clip, or it leaves the path that
    inversion traced (measured on the bundled model: ~36 dB round trip unclipped, ~13 dB clipped).
    """
    sched = DDIMScheduler.from_config(model.scheduler.config, clip_sample=clip_sample)
    sched.set_timesteps(num_steps)
    grid = [int(t) for t in sched.timesteps]
    start = grid[0] if start_t is None else grid_timestep(model, start_t, num_steps)
    stop = None if stop_t is None else grid_timestep(model, stop_t, num_steps)
    x = x.to(model.device)
    steps = [t for t in grid if t <= start and (stop is None or t > stop)]
    for t in tqdm(steps, desc="denoise", disable=not progress, leave=False):
        active = edit is not None and edit.schedule.active(t)
        with shift_h(model.unet, edit.direction if active else None, edit.alphas if active else None):
            model_output = model.unet(x, t).sample  # noise, velocity or clean image: the scheduler knows which
        x = sched.step(model_output, t, x).prev_sample
    return x


def sample(model: DiffusionModel, n: int, seed: int = 0, num_steps: int = DEFAULT_STEPS, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n seeded samples (x0 clipped as the model's scheduler asks); returns (x_T, images in [-1, 1]).

    To edit a sample, invert the returned image like any real image: its x_T here was decoded
    with clipping, which edits (decoded without) would not reproduce.
    """
    size, ch = model.resolution, model.unet.config.in_channels
    x_T = torch.randn(n, ch, size, size, generator=torch.Generator().manual_seed(seed)).to(model.device)
    clip = bool(model.scheduler.config.get("clip_sample", True))
    return x_T, denoise(model, x_T, num_steps, progress=progress, clip_sample=clip)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (data range 2)."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)


def reconstruct(model: DiffusionModel, x0: torch.Tensor, num_steps: int = DEFAULT_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert then denoise; returns (reconstruction, per-image PSNR in dB)."""
    rec = denoise(model, invert(model, x0, num_steps), num_steps)
    return rec, psnr(rec.cpu(), x0.cpu())
