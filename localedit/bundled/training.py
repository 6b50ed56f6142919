"""Train a small pixel-space DDPM on procedural faces, resumably.

Everything a run needs to continue after an interruption (weights, EMA, optimiser, step,
loss log) lives in one checkpoint file that is replaced atomically, so a killed run loses at
most ``checkpoint_every`` steps and never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from localedit.bundled.synthetic import GENERATOR_VERSION, sample_faces
from localedit.core.parameterisation import check_prediction_type, training_target
from localedit.utils.atomic import write_atomic
from localedit.utils.pixels import to_signed

CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "loss_log.jsonl"


@dataclass
class TrainConfig:
    resolution: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    steps: int = 15000
    batch_size: int = 48
    learning_rate: float = 4e-4
    final_learning_rate: float = 2e-5
    warmup_steps: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    bf16: bool = True
    seed: int = 0
    checkpoint_every: int = 250
    time_budget_minutes: float | None = None
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    init_from: str | None = None
    generator_version: str = field(default=GENERATOR_VERSION)

    def __post_init__(self):
        check_prediction_type(self.prediction_type)

    def unet_config(self) -> dict:
        n = len(self.block_out_channels)
        return dict(
            sample_size=self.resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            add_attention=True,
            norm_num_groups=min(32, self.block_out_channels[0]),
        )


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    minutes: float


def learning_rate(config: TrainConfig, progress: float, step: int) -> float:
    """Linear warm-up, then cosine decay over *progress* (steps or wall clock, whichever is further)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * cos


def _load_init_weights(model: UNet2DModel, init_from: str) -> None:
    """Start a fine-tune from a diffusers folder of the same architecture."""
    source = UNet2DModel.from_pretrained(init_from, low_cpu_mem_usage=False)
    differ = [k for k, v in model.config.items()
              if not k.startswith("_") and json.dumps(source.config.get(k)) != json.dumps(v)]
    if differ:
        raise ValueError(f"init_from {init_from} has another architecture (differs in {differ})")
    model.load_state_dict(source.state_dict())


def _canonical(config: dict) -> str:
    """What must match to resume, as JSON (a saved tuple equals a list passed back through Prefect).

    The time budget may change between sessions: extending it just lengthens the cosine decay.
    """
    return json.dumps({k: v for k, v in config.items() if k != "time_budget_minutes"}, sort_keys=True)


def _atomic_save(obj, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _update_ema(ema: UNet2DModel, model: UNet2DModel, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train(config: TrainConfig, work_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train (or resume) in ``work_dir``; export the EMA model to ``work_dir/model``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = UNet2DModel(**config.unet_config())
    ckpt_path = work_dir / CHECKPOINT
    if config.init_from and not ckpt_path.exists():  # a resumed run takes its weights from the checkpoint
        _load_init_weights(model, config.init_from)
    ema = UNet2DModel(**config.unet_config())
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="linear",
                              prediction_type=config.prediction_type)
    alphas_cumprod = scheduler.alphas_cumprod

    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        if _canonical(state["config"]) != _canonical(asdict(config)):
            raise ValueError(f"{ckpt_path} was written with another configuration; use a new work_dir")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]

    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if config.bf16 else nullcontext()
    log = open(work_dir / LOSS_LOG, "a")
    start = time.monotonic() - elapsed
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", smoothing=0.05)
    loss_value = float("nan")
    model.train()
    while step < config.steps:
        elapsed = time.monotonic() - start
        frac = step / config.steps if budget is None else max(step / config.steps, elapsed / budget)
        if frac >= 1.0:
            break
        lr = learning_rate(config, frac, step)
        for group in opt.param_groups:
            group["lr"] = lr
        # Fresh data every step: the generator's seed stream is indexed by step, so resume is exact.
        x0 = sample_faces(config.batch_size, seed=config.seed * 1_000_003 + step, size=config.resolution).images
        x0 = to_signed(x0)
        g = torch.Generator().manual_seed(config.seed * 7_919 + step)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast:
            pred = model(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), training_target(config.prediction_type, x0, noise, a))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        step += 1
        _update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        loss_value = loss.item()
        log.write(json.dumps({"step": step, "loss": loss_value, "lr": lr}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.1e}")
        if step % config.checkpoint_every == 0:
            log.flush()
            _atomic_save(
                {"config": asdict(config), "model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "step": step, "elapsed": time.monotonic() - start},
                ckpt_path,
            )
    bar.close()
    log.close()
    elapsed = time.monotonic() - start
    _atomic_save(
        {"config": asdict(config), "model": model.state_dict(), "ema": ema.state_dict(),
         "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed},
        ckpt_path,
    )
    model_dir = export_model(ema, scheduler, work_dir / "model")
    return TrainResult(model_dir, step, smoothed_loss(work_dir), elapsed / 60)


def export_model(unet: UNet2DModel, scheduler: DDPMScheduler, out_dir: Path) -> Path:
    """Write a diffusers folder (UNet weights + config, scheduler config) atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    unet.save_pretrained(tmp)
    scheduler.save_pretrained(tmp)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def load_loss_log(work_dir: str | Path) -> list[dict]:
    path = Path(work_dir) / LOSS_LOG
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # A resumed run re-logs the steps after its last checkpoint: keep the latest entry per step.
    return list({r["step"]: r for r in rows}.values())


def smoothed_loss(work_dir: str | Path, window: int = 200) -> float:
    losses = [r["loss"] for r in load_loss_log(work_dir)]
    return float(np.mean(losses[-window:])) if losses else float("nan")
