"""What a U-Net predicts (noise, clean image or velocity), and conversions between them.

diffusers records the choice as the scheduler's ``prediction_type``. Throughout localedit the
U-Net's output is called ``model_output`` (diffusers' name) wherever it need not be noise;
``eps`` and "noise prediction" mean the noise prediction itself (converted through here). The method is stated for
the noise prediction, so everything that reads the U-Net's output (the Jacobian, x-space
baselines) converts through here and works on any of the three.

Why the bundled model predicts velocity: an epsilon model must pass x_t through to its output
almost unchanged at high t, where the clean image is 1/150 of the signal; a small model's
output error there was measured as x0 errors of 2-5 (data std 0.37) at t >= 900, which left
DDIM samples grainy and washed out. v = sqrt(a) eps - sqrt(1 - a) x0 stays well scaled at every t.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(kind: str) -> str:
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {kind!r}; use one of {PREDICTION_TYPES}")
    return kind


def training_target(kind: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the U-Net should output for x_t = sqrt(a) x0 + sqrt(1 - a) noise."""
    check_prediction_type(kind)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def to_x0(kind: str, model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean-image estimate implied by the U-Net's output (same shape as x_t, (n, C, H, W))."""
    check_prediction_type(kind)
    if kind == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if kind == "sample":
        return model_output
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * model_output


def noise_gain(kind: str, alpha_bar: torch.Tensor) -> torch.Tensor:
    """d(noise prediction)/d(model_output) at fixed x_t: a scalar, so Jacobians of the output and of
    the noise prediction share their singular vectors and differ only in scale (and sign)."""
    check_prediction_type(kind)
    if kind == "epsilon":
        return torch.ones_like(alpha_bar)
    if kind == "sample":
        return -(alpha_bar / (1 - alpha_bar)).sqrt()
    return alpha_bar.sqrt()
