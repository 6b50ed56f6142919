"""Load a pixel-space DDPM (hub id, local diffusers folder, or the bundled default).

Every loaded model carries a fingerprint (hash of everything that changes the sampler's
numbers: the U-Net's config and weights and the scheduler's config) so that directions mined
on one model, or under one noise schedule or parameterisation, are never silently applied to
another. A model folder must say what its U-Net predicts: one without a readable scheduler
config is refused, never given a default (a velocity model read as a noise model inverts to
garbage without any error).
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor

from localedit.core.parameterisation import check_prediction_type, noise_gain, to_x0
from localedit.utils.paths import DATA_DIR

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
        return square_size(self.unet.config.sample_size)


def square_size(sample_size) -> int:
    """The side of a square model's images: ``sample_size`` is an int or (height, width) in diffusers."""
    if isinstance(sample_size, (list, tuple)) and len(sample_size) == 2 and all(isinstance(v, int) for v in sample_size):
        if sample_size[0] != sample_size[1]:
            raise ValueError(f"non-square models ({sample_size[0]}x{sample_size[1]}) are not supported")
        sample_size = sample_size[0]
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise ValueError(f"the U-Net's sample_size {sample_size!r} is not an image size")
    return sample_size


def check_unet(unet: UNet2DModel) -> None:
    """Refuse U-Nets this product cannot drive: non-square, latent-space or class-conditional ones."""
    config = unet.config
    square_size(config.sample_size)
    if config.in_channels != config.out_channels:
        raise ValueError(f"the U-Net reads {config.in_channels} channels but predicts {config.out_channels}; "
                         f"a pixel-space DDPM predicts as many as it reads")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise ValueError("class-conditional U-Nets (num_class_embeds / class_embed_type) are not supported")


def check_scheduler(scheduler: DDPMScheduler) -> None:
    """Refuse a schedule under which the U-Net's output does not convert to finite x0 and noise at every t
    (e.g. a noise-predicting model with zero terminal SNR, or a clean-image one with alpha_bar = 1)."""
    kind = check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))
    alpha_bar = scheduler.alphas_cumprod.double()
    one = torch.ones_like(alpha_bar)
    if not (torch.isfinite(to_x0(kind, one, one, alpha_bar)).all() and torch.isfinite(noise_gain(kind, alpha_bar)).all()
            and ((alpha_bar >= 0) & (alpha_bar <= 1)).all()):
        raise ValueError(f"the scheduler's noise schedule (alpha_bar from {float(alpha_bar[0]):.3g} to "
                         f"{float(alpha_bar[-1]):.3g}) does not invert a {kind!r} prediction to finite values")


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


def fingerprint(unet: UNet2DModel, scheduler: DDPMScheduler) -> str:
    """sha256 over the U-Net config, every weight (in a fixed order) and the scheduler config; 16 hex digits."""
    digest = hashlib.sha256()
    for config in (unet.config, scheduler.config):
        public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


SCHEDULER_FILES = ("scheduler_config.json", "scheduler/scheduler_config.json")


def _local_scheduler(folder: Path) -> DDPMScheduler:
    """The scheduler a local diffusers folder declares; missing or unreadable config files are errors."""
    found = [folder / name for name in SCHEDULER_FILES if (folder / name).is_file()]
    if not found:
        raise ValueError(f"model folder {folder} has no {' or '.join(SCHEDULER_FILES)}: without it the product "
                         f"cannot know what the U-Net predicts (noise, clean image or velocity) nor its noise "
                         f"schedule; add the scheduler config the model was trained with")
    try:
        config = json.loads(found[0].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the scheduler config {found[0]}: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"the scheduler config {found[0]} is not a JSON object")
    return _scheduler(config, str(found[0]))


def _scheduler(config: dict, where: str) -> DDPMScheduler:
    try:
        scheduler = DDPMScheduler.from_config(config)
    except (TypeError, ValueError, NotImplementedError, KeyError) as err:
        raise ValueError(f"the scheduler config {where} is not usable: {err}") from err
    try:
        check_scheduler(scheduler)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return scheduler


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached from here, or None when its host name resolves.

    Asked before a hub id is loaded: without a network, huggingface_hub retries each file for ~25 s before it
    fails, with a warning line per retry, and its final error names a missing file, not the network."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError) as err:
        return f"{host}: {getattr(err, 'strerror', None) or err}"
    return None


def _hub_scheduler(source: str, cached_only: bool) -> DDPMScheduler:
    for subfolder in (None, "scheduler"):
        try:
            config = DDPMScheduler.load_config(source, subfolder=subfolder, local_files_only=cached_only)
            return _scheduler(dict(config), f"{source} (hub)")
        except (OSError, EnvironmentError):
            continue
    raise ValueError(f"hub model {source!r} has no scheduler config; the product cannot know what its U-Net predicts")


def from_unet(unet: UNet2DModel, scheduler: DDPMScheduler | None = None, source: str = "in-memory") -> DiffusionModel:
    """Wrap an in-memory U-Net (tests, training) the same way a loaded one is wrapped (default: a linear
    1000-step noise-predicting schedule). Raises ValueError on U-Nets or schedules the product cannot drive."""
    check_unet(unet)
    scheduler = scheduler or DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    check_scheduler(scheduler)
    unet.eval().requires_grad_(False)
    use_classic_attention(unet)
    return DiffusionModel(unet, scheduler, fingerprint(unet, scheduler), source)


def save_model(model: DiffusionModel, folder: str | Path) -> Path:
    """Write a diffusers folder (U-Net weights and config, scheduler config) that ``load_model`` reads back
    with the same fingerprint."""
    model.unet.save_pretrained(folder)
    model.scheduler.save_pretrained(folder)
    return Path(folder)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _nearest_folder(path: Path, shown: int = 8) -> str:
    """``"; data/models/ has: faces-32, probe"``: the nearest folder above a missing ``path`` that exists, and the
    first ``shown`` of its entries (hidden ones left out), so a mistyped path can be told from the listing."""
    folder = next((parent for parent in path.parents if parent.is_dir()), None)
    if folder is None:
        return ""
    names = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    where = "this folder" if folder == Path(".") else folder.as_posix().rstrip("/") + "/"
    return f"; {where} has: {', '.join(names[:shown]) or 'nothing'}{more}"


def _is_local_folder(source: str) -> bool:
    """True for a local model folder, False for a hub id (owner/name); FileNotFoundError or ValueError, naming
    what is there, for a path that is neither a model folder nor could be a hub id."""
    path = Path(source)
    if not path.exists():
        if source.startswith((".", "/")) or source.count("/") != 1:
            raise FileNotFoundError(f"{source!r} is neither a local diffusers folder nor a hub id (owner/name)"
                                    f"{_nearest_folder(path)}")
        owner = Path(source.split("/")[0])
        if owner.is_dir():  # a mistyped folder: else 45 s of hub retries offline, then a hub error
            raise FileNotFoundError(f"model folder {source} does not exist ({owner}/ is a folder here, so it is read "
                                    f"as a path, not a hub id){_nearest_folder(path)}")
        return False
    if not path.is_dir():
        raise ValueError(f"model {source} is a file; give a diffusers model folder (config.json, weights, "
                         f"scheduler_config.json)")
    if not any((path / name).is_file() for name in ("config.json", "unet/config.json", *SCHEDULER_FILES)):
        inside = [entry.name for entry in sorted(path.iterdir()) if (entry / "config.json").is_file()]
        if inside:  # a folder of model folders (data/models), not a model or a pipeline's folder
            raise ValueError(f"{source} holds model folders, not a model: give one of {', '.join(inside)}")
    return True


def load_model(source: str | Path | None = None, device: str | torch.device | None = None) -> DiffusionModel:
    """Open ``source``: None or "bundled" (offline default), a local diffusers folder, or a hub id.

    Hub ids need the network or the Hugging Face cache: where the hub's host does not resolve, only the cache is
    read, and an uncached id fails at once (OSError) naming the cause. An owner/name whose owner is a folder here
    (``data/model``) is read as a mistyped path: FileNotFoundError listing that folder, without asking the hub.
    """
    if source is None or str(source) == "bundled":
        path = BUNDLED_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled model is missing at {path}; train it with `python -m flows.train`"
            )
        source = str(path)
    local = _is_local_folder(str(source))
    scheduler = _local_scheduler(Path(source)) if local else None  # checked first: it is cheap
    unreachable = None if local else _hub_unreachable()
    cached_only = local or unreachable is not None  # a hub id without a network: its cached copy, if any
    try:
        try:
            unet = UNet2DModel.from_pretrained(str(source), local_files_only=cached_only, low_cpu_mem_usage=False)
        except (OSError, EnvironmentError):
            unet = UNet2DModel.from_pretrained(str(source), subfolder="unet", local_files_only=cached_only,
                                               low_cpu_mem_usage=False)
    except Exception as err:  # noqa: BLE001 -- diffusers and safetensors raise many types for a bad folder
        if local:  # the folder is what is wrong (missing or truncated weights, garbled config): bad input
            raise ValueError(f"cannot load a UNet2DModel from model folder {source}: {_one_line(err)}") from err
        if unreachable:
            raise OSError(f"hub model {source!r} is not in the Hugging Face cache and the hub cannot be reached "
                          f"({unreachable}); hub ids need network access or a cached copy") from err
        raise OSError(f"could not load a UNet2DModel from {source!r} (hub ids need network access or a cached "
                      f"copy): {_one_line(err)}") from err
    try:
        model = from_unet(unet, scheduler or _hub_scheduler(str(source), cached_only), str(source))
    except ValueError as err:
        raise ValueError(f"model {source}: {err}") from err
    model.unet.to(select_device(str(device) if device else None))
    return model
