"""Train the bundled face model (or a bigger one on a GPU) and publish it with its model card.

    python -m flows.train                       # the bundled 32-px model, <= 100 min on 2 CPU cores
    python -m flows.train --steps 50 --out /tmp/m --quality-samples 0   # a smoke run
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields

from prefect import flow

from localedit.bundled.training import TrainConfig
from localedit.core.models import BUNDLED_MODEL_DIR
from localedit.core.parameterisation import PREDICTION_TYPES
from tasks.train import publish_model, train_unet


@flow(name="train-face-model", log_prints=True)
def train_face_model(
    resolution: int = 32,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    steps: int = 15000,
    batch_size: int = 48,
    time_budget_minutes: float | None = 100,
    seed: int = 0,
    prediction_type: str = "v_prediction",
    init_from: str | None = None,
    work_dir: str = "runs/train-bundled",
    out_dir: str = str(BUNDLED_MODEL_DIR),
    quality_samples: int = 1000,
) -> str:
    """Resumable: rerunning with the same work_dir continues from its checkpoint."""
    config = asdict(TrainConfig(resolution=resolution, block_out_channels=tuple(block_out_channels), steps=steps,
                                batch_size=batch_size, time_budget_minutes=time_budget_minutes, seed=seed,
                                prediction_type=prediction_type, init_from=init_from))
    trained = train_unet(config, work_dir)
    card = publish_model(trained, config, work_dir, out_dir, quality_samples)
    print(f"model card: {card}")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    parser.add_argument("--resolution", type=int, default=defaults["resolution"])
    parser.add_argument("--channels", type=lambda s: tuple(int(c) for c in s.split(",")), default=(32, 64, 64))
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--minutes", type=float, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", default=defaults["prediction_type"], choices=PREDICTION_TYPES)
    parser.add_argument("--init-from", default=None, help="diffusers folder to fine-tune from (same architecture)")
    parser.add_argument("--work-dir", default="runs/train-bundled")
    parser.add_argument("--out", default=str(BUNDLED_MODEL_DIR))
    parser.add_argument("--quality-samples", type=int, default=1000)
    a = parser.parse_args()
    train_face_model(a.resolution, a.channels, a.steps, a.batch_size, a.minutes or None, a.seed,
                     a.prediction_type, a.init_from, a.work_dir, a.out,
                     a.quality_samples)


if __name__ == "__main__":
    main()
