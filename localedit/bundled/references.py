"""Supervised reference directions: what a clean local edit of each generator factor looks like in h-space.

We own the generator of the bundled model's training faces (``localedit.bundled.synthetic``), so for
every factor that acts on one region we can draw *twins*: faces identical except for that
factor, set to two values. DDIM-invert both twins, denoise to the editing timestep t, and
average the difference of their bottleneck features over many twin pairs: a unit h-space
direction that changes that factor alone (e.g. eye openness: locality 0.92 on held-out faces
when added at every reverse step). These are not a mining method (they need labels); they are
the yardstick mined directions are compared with (|cos| to them, and reference rows in every
evaluation, named ``reference_<factor>``).

References are computed once per (model fingerprint, t, DDIM steps) and cached as safetensors
under ``$LOCALEDIT_CACHE`` (default ``~/.cache/localedit``). A model folder may carry them too
(the bundled model ships the default run's, so a fresh clone need not spend ~2 CPU minutes on
them); regenerate those with ``python -m localedit.bundled.references``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from localedit.bundled.synthetic import GENERATOR_VERSION, render, sample_factors
from localedit.core.ddim import DEFAULT_STEPS, denoise, grid_timestep, invert
from localedit.core.hspace import encode
from localedit.core.models import DiffusionModel
from localedit.utils.atomic import write_atomic
from localedit.utils.pixels import to_signed


@dataclass(frozen=True)
class Twin:
    """A factor, the region it acts on, the two values its twins take, and factors held fixed so it shows."""

    factor: str
    region: str
    high: float
    low: float
    hold: tuple[tuple[str, float], ...] = ()


# One twin recipe per generator factor that acts on a single region.
TWINS = (
    Twin("eye_openness", "eyes", 0.95, 0.0),
    Twin("iris_color", "eyes", 1.0, 0.0, (("eye_openness", 0.9),)),
    Twin("mouth_curvature", "mouth", 1.0, -1.0),
    Twin("mouth_openness", "mouth", 1.0, 0.0),
    Twin("lip_redness", "mouth", 1.0, 0.0),
)
REFERENCE_PREFIX = "reference_"
TWIN_PAIRS = 8
TWIN_SEED = 777


def trained_on_generator(model: DiffusionModel) -> bool:
    """Whether the model's folder says it was trained on this generator's faces (``training.json``)."""
    path = Path(model.source) / "training.json"
    try:
        return json.loads(path.read_text())["config"]["generator_version"] == GENERATOR_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cache_dir() -> Path:
    """Where computed references are kept: ``$LOCALEDIT_CACHE`` or ``~/.cache/localedit``."""
    return Path(os.environ.get("LOCALEDIT_CACHE", Path.home() / ".cache" / "localedit"))


def twin_direction(h_high: torch.Tensor, h_low: torch.Tensor) -> torch.Tensor:
    """Unit mean difference (d,) of paired features (n, ...) - (n, ...): the reference direction of the pairs."""
    if h_high.shape != h_low.shape or h_high.shape[0] == 0:
        raise ValueError(f"twins must pair up: got {tuple(h_high.shape)} and {tuple(h_low.shape)}")
    mean = (h_high - h_low).flatten(1).to(torch.float64).mean(0)
    norm = mean.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the twins' features do not differ: no reference direction")
    return (mean / norm).float()


def regions_of(twins=TWINS) -> dict[str, list[str]]:
    """Region -> the factors that have a reference in it."""
    out: dict[str, list[str]] = {}
    for twin in twins:
        out.setdefault(twin.region, []).append(twin.factor)
    return out


def _twin_h(model: DiffusionModel, twin: Twin, t: int, num_steps: int, pairs: int, seed: int) -> torch.Tensor:
    """Flat h at t of the (high, low) twins: (2, pairs, d)."""
    factors = sample_factors(pairs, seed)
    for name, value in twin.hold:
        factors[name] = value
    tables = [factors.assign(**{twin.factor: value}) for value in (twin.high, twin.low)]
    images = torch.cat([render(table, model.resolution) for table in tables]).to(model.device)
    x_t = denoise(model, invert(model, to_signed(images), num_steps), num_steps, stop_t=t)
    return encode(model.unet, x_t, t).h.flatten(1).view(2, pairs, -1).cpu()


def reference_directions(model: DiffusionModel, t: int, num_steps: int = DEFAULT_STEPS, pairs: int = TWIN_PAIRS,
                         seed: int = TWIN_SEED, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """Factor -> unit reference direction (d,) at the grid timestep nearest t; cached per model.

    Read from the model's folder or ``cache`` (default ``cache_dir()``) when there, else computed
    and written to ``cache``. Only meaningful for models trained on ``localedit.bundled.synthetic`` faces
    (the bundled one): on any other model the twins are out of distribution.
    """
    t = grid_timestep(model, t, num_steps)
    name = f"references-{model.fingerprint}-t{t}-s{num_steps}-p{pairs}-seed{seed}.safetensors"
    path = (cache or cache_dir()) / name
    for stored_at in (Path(model.source) / name, path):
        if stored_at.is_file():
            stored = load_file(stored_at)
            if set(stored) == {twin.factor for twin in TWINS}:
                return stored
    found = {}
    for twin in TWINS:
        high, low = _twin_h(model, twin, t, num_steps, pairs, seed)
        found[twin.factor] = twin_direction(high, low)
    write_atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in found.items()}, str(tmp)))
    return found


def main() -> None:
    """Write the default run's references into the bundled model's folder (after retraining it)."""
    from localedit.core.mining import DEFAULT_T
    from localedit.core.models import BUNDLED_MODEL_DIR, load_model

    model = load_model("bundled")
    reference_directions(model, DEFAULT_T, cache=BUNDLED_MODEL_DIR)
    print(f"wrote the references of {model.fingerprint} to {BUNDLED_MODEL_DIR}")


if __name__ == "__main__":
    main()
