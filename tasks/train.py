"""Prefect tasks over localedit.bundled.training and localedit.evaluation.model_card: paths in, paths out."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import task

from localedit.bundled.probe import load_probe
from localedit.bundled.training import TrainConfig, load_loss_log, train
from localedit.core.models import load_model, save_model
from localedit.evaluation.model_card import loss_curve, measure, sample_grid, write_card


@task(tags=["gpu"], retries=1)
def train_unet(config: dict, work_dir: str) -> dict:
    """Train or resume; a retry resumes from the last checkpoint instead of starting over."""
    result = train(TrainConfig(**config), work_dir)
    return {"model_dir": str(result.model_dir), "steps": result.steps,
            "final_loss": result.final_loss, "minutes": result.minutes}


@task(tags=["gpu"])
def publish_model(trained: dict, config: dict, work_dir: str, out_dir: str, quality_samples: int) -> str:
    """Copy the EMA weights to out_dir with figures, measured quality and a model card."""
    out = Path(out_dir)
    model = load_model(trained["model_dir"])
    save_model(model, out)
    model = load_model(out)
    loss_curve(load_loss_log(work_dir), out / "loss_curve.png", config["prediction_type"])
    sample_grid(model, out / "samples.png")
    quality = measure(model, load_probe(), n=quality_samples) if quality_samples else None
    card = dict(config, steps_done=trained["steps"], device=str(model.device))
    (out / "training.json").write_text(json.dumps(
        {"config": card, "final_loss": trained["final_loss"], "minutes": trained["minutes"],
         "quality": None if quality is None else asdict(quality)}, indent=2))
    return str(write_card(out, card, trained["final_loss"], trained["minutes"], quality))
