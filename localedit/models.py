"""Load a pixel-space DDPM (hub id, local diffusers folder, or the bundled default).

Every loaded model carries a fingerprint (hash of its config and weights) so that directions
mined on one model are never silently applied to another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor

from localedit.parameterisation import check_prediction_type, to_x0
from localedit.paths import DATA_DIR

BUNDLED_MODEL_DIR = DATA_DIR / "models" / "faces-32"


@dataclass
class DiffusionModel:
    """A U-Net with its noise schedule, where it came from, and its fingerprint."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    fingerprint: str
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)


def prediction_type(model: DiffusionModel) -> str:
    """What the U-Net outputs ("epsilon", "v_prediction" or "sample"), from its scheduler config."""
    return check_prediction_type(model.scheduler.config.get("prediction_type", "epsilon"))


def predicted_x0(model: DiffusionModel, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """The model's estimate of the clean image from x_t, whatever the U-Net predicts."""
    alpha_bar = model.scheduler.alphas_cumprod[t].to(x_t)
    return to_x0(prediction_type(model), model.unet(x_t, t).sample, x_t, alpha_bar)


def select_device(prefer: str | None = None) -> torch.device:
    """The one device rule: an explicit choice wins, else CUDA when present, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_classic_attention(unet: torch.nn.Module) -> None:
    """Forward-mode AD (torch.func.jvp) fails through SDPA; the classic processor supports it."""
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())


def fingerprint(unet: UNet2DModel) -> str:
    """sha256 over the config and every weight, in a fixed order; 16 hex digits."""
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _load_scheduler(source: str, local: bool) -> DDPMScheduler:
    for subfolder in (None, "scheduler"):
        try:
            return DDPMScheduler.from_pretrained(source, subfolder=subfolder, local_files_only=local)
        except (OSError, ValueError):
            continue
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


def from_unet(unet: UNet2DModel, scheduler: DDPMScheduler | None = None, source: str = "in-memory") -> DiffusionModel:
    """Wrap an in-memory U-Net (tests, training) the same way a loaded one is wrapped."""
    unet.eval().requires_grad_(False)
    use_classic_attention(unet)
    scheduler = scheduler or DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return DiffusionModel(unet, scheduler, fingerprint(unet), source)


def load_model(source: str | Path | None = None, device: str | torch.device | None = None) -> DiffusionModel:
    """Open ``source``: None or "bundled" (offline default), a local diffusers folder, or a hub id.

    Hub ids need the network (or a warm Hugging Face cache); offline, their error says so.
    """
    if source is None or str(source) == "bundled":
        path = BUNDLED_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled model is missing at {path}; train it with `python -m flows.train`"
            )
        source = str(path)
    local = Path(source).exists()
    if not local and (str(source).startswith((".", "/")) or str(source).count("/") != 1):
        raise FileNotFoundError(f"{source!r} is neither a local diffusers folder nor a hub id (owner/name)")
    try:
        try:
            unet = UNet2DModel.from_pretrained(str(source), local_files_only=local, low_cpu_mem_usage=False)
        except (OSError, EnvironmentError):
            unet = UNet2DModel.from_pretrained(str(source), subfolder="unet", local_files_only=local, low_cpu_mem_usage=False)
    except OSError as err:
        hint = "" if local else " (hub ids need network access or a cached copy)"
        raise OSError(f"could not load a UNet2DModel from {source!r}{hint}: {err}") from err
    model = from_unet(unet, _load_scheduler(str(source), local), str(source))
    model.unet.to(select_device(str(device) if device else None))
    return model
