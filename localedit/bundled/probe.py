"""A small CNN that reads every generator factor back out of a 32x32 face.

Edits are judged by what they change: the probe turns an (original, edited) pair into a
per-factor change, and its penultimate features give a "probe-FID" that is meaningful for
these faces (Inception features are not, at 32 px). It is trained on fresh generator
batches only, so it never sees the diffusion model's samples.

``background_hue`` is an angle (hue 0 and hue 1 render the same colour), so the probe
regresses its cosine and sine and all errors and changes on it are wrapped.

Regenerate the shipped probe with ``python -m localedit.bundled.probe``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from localedit.bundled.synthetic import (
    FACTOR_SCOPE,
    FACTORS,
    GENERATOR_VERSION,
    GLOBAL_SCOPE,
    REGION_SCOPE,
    sample_faces,
    sample_factors,
)
from localedit.utils.paths import DATA_DIR
from localedit.utils.pixels import to_signed

DEFAULT_DIR = DATA_DIR / "models" / "probe"
WEIGHTS = "probe.safetensors"
META = "probe.json"
CIRCULAR = ("background_hue",)  # factors in [0, 1) that wrap around
# Training batches use seeds seed * 1_000_003 + step; held-out ones start far above them.
HELDOUT_SEED = 2**40


def _wrap(delta: np.ndarray) -> np.ndarray:
    """Shortest signed difference on a unit circle, in [-0.5, 0.5)."""
    return (delta + 0.5) % 1.0 - 0.5


class FactorProbe(nn.Module):
    """Conv stages (convs + SiLU, then 2x average pool), a feature layer, a linear factor head."""

    def __init__(
        self,
        factors: list[str],
        means: list[float],
        stds: list[float],
        channels: tuple[int, ...] = (32, 64, 128),
        convs: int = 1,
        feature_dim: int = 256,
        size: int = 32,
    ):
        super().__init__()
        self.factors = list(factors)
        self.circular = [f in CIRCULAR for f in self.factors]
        self.config = dict(channels=list(channels), convs=convs, feature_dim=feature_dim, size=size)
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU()]
                c_in = c
            layers.append(nn.AvgPool2d(2))
        side = size // 2 ** len(channels)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, feature_dim), nn.SiLU())
        # One output per ordinary factor, two (cos, sin) per circular one.
        self.head = nn.Linear(feature_dim, len(self.factors) + sum(self.circular))
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stds, dtype=torch.float32))
        self.meta: dict = {}

    def _check(self, images: torch.Tensor) -> None:
        size = self.config["size"]
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images of shape (n, 3, {size}, {size}), got {tuple(images.shape)}")
        # Diffusion outputs are in [-1, 1]; feeding them unconverted would silently skew every reading.
        if images.min() < -0.01 or images.max() > 1.01:
            raise ValueError("the probe expects images in [0, 1]; convert [-1, 1] outputs with (x + 1) / 2")

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(to_signed(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw head outputs (standardised targets) for images in [0, 1]."""
        return self.head(self._embed(images))

    def targets(self, factors: pd.DataFrame) -> torch.Tensor:
        """The regression targets for a factor table, in the head's output layout."""
        cols = []
        for i, (name, circ) in enumerate(zip(self.factors, self.circular)):
            x = torch.tensor(factors[name].to_numpy(), dtype=torch.float32)
            if circ:
                cols += [math.sqrt(2) * torch.cos(2 * math.pi * x), math.sqrt(2) * torch.sin(2 * math.pi * x)]
            else:
                cols.append((x - self.mean[i]) / self.std[i])
        return torch.stack(cols, 1)

    def _decode(self, raw: torch.Tensor) -> np.ndarray:
        out, j = [], 0
        for i, circ in enumerate(self.circular):
            if circ:
                angle = torch.atan2(raw[:, j + 1], raw[:, j])
                out.append(torch.remainder(angle / (2 * math.pi), 1.0))
                j += 2
            else:
                out.append(raw[:, j] * self.std[i] + self.mean[i])
                j += 1
        return torch.stack(out, 1).numpy()

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate features (n, feature_dim), the embedding for ``frechet_distance``."""
        self._check(images)
        return torch.cat([self._embed(chunk) for chunk in images.split(batch_size)])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> pd.DataFrame:
        """Predicted factors in the generator's own units, one row per image."""
        self._check(images)
        raw = torch.cat([self(chunk) for chunk in images.split(batch_size)])
        return pd.DataFrame(self._decode(raw), columns=self.factors)


def r2_scores(probe: FactorProbe, predicted: pd.DataFrame, true: pd.DataFrame) -> dict[str, float]:
    """Coefficient of determination per factor; circular factors use the wrapped error."""
    scores = {}
    for name, circ in zip(probe.factors, probe.circular):
        t, p = true[name].to_numpy(), predicted[name].to_numpy()
        err = _wrap(p - t) if circ else p - t
        scores[name] = float(1 - np.mean(err**2) / np.var(t))
    return scores


def train_probe(
    steps: int = 2000,
    out_dir: str | Path = DEFAULT_DIR,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    channels: tuple[int, ...] = (32, 64, 128),
    convs: int = 1,
    feature_dim: int = 256,
    learning_rate: float = 2e-3,
    eval_size: int = 2000,
) -> FactorProbe:
    """Train on fresh generator batches, score held-out R^2, and save weights + metadata."""
    torch.manual_seed(seed)
    # Target scales come from a large factor-only draw (cheap: nothing is rendered).
    ref = sample_factors(100_000, seed=HELDOUT_SEED + 1 + seed)
    probe = FactorProbe(FACTORS, ref[FACTORS].mean().tolist(), ref[FACTORS].std().tolist(), channels, convs, feature_dim)
    opt = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    start, start_cpu = time.monotonic(), time.process_time()
    probe.train()
    for step in (bar := tqdm(range(steps), disable=not progress, desc="probe")):
        batch = sample_faces(batch_size, seed=seed * 1_000_003 + step)
        loss = nn.functional.mse_loss(probe(batch.images), probe.targets(batch.factors))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    train_seconds, train_cpu_seconds = time.monotonic() - start, time.process_time() - start_cpu
    probe.eval()

    heldout = sample_faces(eval_size, seed=HELDOUT_SEED + seed)
    r2 = r2_scores(probe, probe.predict(heldout.images), heldout.factors)
    probe.meta = dict(
        config=probe.config,
        factors=probe.factors,
        circular=[f for f, c in zip(probe.factors, probe.circular) if c],
        means=dict(zip(probe.factors, probe.mean.tolist())),
        stds=dict(zip(probe.factors, probe.std.tolist())),
        heldout_r2=r2,
        heldout_size=eval_size,
        heldout_seed=HELDOUT_SEED + seed,
        generator_version=GENERATOR_VERSION,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        train_seconds=round(train_seconds, 1),  # wall clock: inflated when the CPU is shared
        train_cpu_seconds=round(train_cpu_seconds, 1),
        torch_threads=torch.get_num_threads(),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, out_dir / WEIGHTS)
    (out_dir / META).write_text(json.dumps(probe.meta, indent=2) + "\n")
    return probe


def load_probe(path: str | Path | None = None) -> FactorProbe:
    """Load a saved probe (default: the one shipped in data/models/probe), in eval mode."""
    path = Path(path) if path is not None else DEFAULT_DIR
    meta = json.loads((path / META).read_text())
    probe = FactorProbe(
        meta["factors"],
        [meta["means"][f] for f in meta["factors"]],
        [meta["stds"][f] for f in meta["factors"]],
        tuple(meta["config"]["channels"]),
        meta["config"]["convs"],
        meta["config"]["feature_dim"],
        meta["config"]["size"],
    )
    probe.load_state_dict(load_file(path / WEIGHTS))
    probe.meta = meta
    if meta["generator_version"] != GENERATOR_VERSION:
        warnings.warn(
            f"probe in {path} was trained on generator {meta['generator_version']}, "
            f"but the generator is now {GENERATOR_VERSION}; retrain it",
            stacklevel=2,
        )
    return probe.eval()


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    tr sqrt(Ca Cb) is computed as tr sqrt(Ca^1/2 Cb Ca^1/2), a symmetric PSD matrix, so a
    float64 eigen-decomposition suffices and no scipy is needed.
    """
    a = torch.as_tensor(feats_a, dtype=torch.float64)
    b = torch.as_tensor(feats_b, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, d) feature sets of the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least two samples per set to estimate a covariance")
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    evals, evecs = torch.linalg.eigh(cov_a)
    root_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross)


def factor_change(probe: FactorProbe, original: torch.Tensor, edited: torch.Tensor) -> pd.DataFrame:
    """Predicted per-factor change from original to edited, in units of each factor's std.

    Rows pair up image by image; read |change| to see which factors an edit moved.
    """
    if original.shape != edited.shape:
        raise ValueError(f"original {tuple(original.shape)} and edited {tuple(edited.shape)} differ in shape")
    delta = probe.predict(edited).to_numpy() - probe.predict(original).to_numpy()
    circ = np.array(probe.circular)
    delta[:, circ] = _wrap(delta[:, circ])
    return pd.DataFrame(delta / probe.std.numpy(), columns=probe.factors)


def scope_factors(scope: str) -> list[str]:
    """Generator factors whose scope is ``scope`` (a region, "face", "hair", "background" or "global")."""
    return [f for f, s in FACTOR_SCOPE.items() if s == scope]


def region_factors(region: str) -> list[str]:
    """Generator factors acting on a region: a preset's own (empty if the generator has none), a sub-region's
    parent's, and for a joint region (names joined by "+", see ``localedit.store.catalogue``) the global factors."""
    return scope_factors(GLOBAL_SCOPE if "+" in region else REGION_SCOPE.get(region, region))


def factor_purity(changes: pd.DataFrame, factors: list[str]) -> np.ndarray:
    """Per edit (row of ``factor_change``'s frame), the share in [0, 1] of squared standardised factor change that
    falls on ``factors``; NaN where none of them is read or nothing changed."""
    own = [f for f in factors if f in changes.columns]
    if not own:
        return np.full(len(changes), np.nan)
    total = (changes.to_numpy() ** 2).sum(1)
    inside = (changes[own].to_numpy() ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the factor probe shipped in data/models/probe.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    probe = train_probe(args.steps, args.out, args.seed, args.batch_size)
    keys = ("heldout_r2", "train_seconds", "train_cpu_seconds")
    print(json.dumps({k: probe.meta[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
