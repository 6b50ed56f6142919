"""Check a mining run's inputs and create (or reopen) its store: bad input fails here, before anything is written.

``plan_run`` makes every check that can be made before a run and writes nothing; ``localedit
mine`` calls it before Prefect starts, so bad input is one line on the command line, and the
``prepare-run`` task calls it again (deployments start there) before it creates the store.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from prefect import task

from localedit.bundled.samples import SAMPLES_DIR, load_image, load_samples
from localedit.core.ddim import grid_timestep
from localedit.core.hspace import h_shape
from localedit.core.jacobian import autocast_dtype
from localedit.core.jive import JIVE
from localedit.core.mining import complements_of
from localedit.core.regions import resolve_regions
from localedit.core.settings import MiningSettings
from localedit.store.runs import STORE_NAME, RunConfig, RunStore
from localedit.utils.badinput import check_output_dir
from tasks.runtime import TASK_OPTIONS, cached_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class SkippedFilesWarning(UserWarning):
    """Files of an --images folder that are not mined (hidden files, other suffixes)."""


def image_files(images: str) -> list[Path]:
    """The image files of a folder, in name order; ``"bundled"`` names the bundled mining subset.

    Hidden files (``.DS_Store``, macOS's ``._x.png`` resource forks) and files without an image
    suffix are skipped with a ``SkippedFilesWarning`` naming them.
    """
    if images == "bundled":
        return [SAMPLES_DIR / name for name in load_samples("mine")[1]["file"]]
    folder = Path(images)
    if not folder.is_dir():
        raise ValueError(f"--images must be a folder of images or 'bundled'; {folder} is not a folder")
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in entries if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p.name for p in entries if p not in files]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} hidden or non-image file(s) in {folder}: {shown}",
                      SkippedFilesWarning, stacklevel=2)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _check_jive(jive: dict, k: int, n_regions: int) -> None:
    """Fit the JIVE settings to random bases of the run's shape, so bad ranks fail before the expensive work."""
    g = torch.Generator().manual_seed(0)
    bases = [torch.linalg.qr(torch.randn(2 * k * n_regions, k, generator=g)).Q for _ in range(n_regions)]
    JIVE(**jive).fit(bases, [torch.ones(k)] * n_regions)


def plan_run(out: str, model: str, images: str | None, samples: int | None, seed: int, regions: str,
             t: int, k: int, num_steps: int, jive: dict, complements: bool = True, t_edit: int | None = None,
             precision: str = MiningSettings.precision) -> dict:
    """Every check that can be made before a run; writes nothing. Returns the store's inputs
    (``config``, ``masks``, ``pixels``, ``x_T``); raises one of ``BAD_INPUT`` on bad input.

    ``t_edit``: the last timestep the catalogue's edits reach (schedule ``from_t_edit``; None: every step). It
    must be one of the model's timesteps: beyond them no step is edited and every direction would do nothing.
    """
    check_output_dir(out)
    if (images is None) == (samples is None):
        raise ValueError("give exactly one of images (a folder, or 'bundled') or samples (a count)")
    loaded = cached_model(model)
    size, channels = loaded.resolution, loaded.unet.config.in_channels
    region_list = resolve_regions(regions, size)
    if len(region_list) < 2:
        raise ValueError("JIVE needs at least two regions to tell joint from individual directions")
    shape = h_shape(loaded.unet)
    if not 1 <= k <= torch.Size(shape).numel():
        raise ValueError(f"k={k} must be between 1 and the h-space dimension {torch.Size(shape).numel()}")
    if not 0 <= t < loaded.scheduler.config.num_train_timesteps or num_steps < 1:
        raise ValueError(f"need 0 <= t < {loaded.scheduler.config.num_train_timesteps} and num_steps >= 1; "
                         f"got t={t}, num_steps={num_steps}")
    if t_edit is not None and not 0 <= t_edit < loaded.scheduler.config.num_train_timesteps:
        raise ValueError(f"--t-edit {t_edit} edits no step: the model's timesteps are 0 to "
                         f"{loaded.scheduler.config.num_train_timesteps - 1}")
    _check_jive(jive, k, len(region_list))
    autocast_dtype(precision)  # an unknown precision name fails here
    if complements:
        complements_of(region_list, size)  # a region covering the whole image has no complement
    pixels = x_T = None
    if images is not None:
        files = image_files(images)
        pixels = torch.stack([load_image(f, size) for f in files])
        ids, sources = [f.name for f in files], [str(f.resolve()) for f in files]
    else:
        if samples < 1:
            raise ValueError(f"samples must be at least 1; got {samples}")
        ids, sources = [f"sample-{i:04d}" for i in range(samples)], [None] * samples
        x_T = torch.randn(samples, channels, size, size, generator=torch.Generator().manual_seed(seed))
    config = RunConfig(
        model_source=model, model_fingerprint=loaded.fingerprint, resolution=size, channels=channels,
        h_shape=tuple(shape), regions=tuple(r.name for r in region_list), images=tuple(ids),
        image_sources=tuple(sources), t=grid_timestep(loaded, t, num_steps), k=k, num_steps=num_steps,
        seed=seed, jive=jive, complements=complements, precision=precision,
    )
    if (Path(out) / STORE_NAME).exists():
        RunStore(out).check_resumable(config)
    return {"config": config, "masks": torch.stack([r.mask for r in region_list]), "pixels": pixels, "x_T": x_T}


@task(name="prepare-run", **TASK_OPTIONS)
def prepare_run(out: str, model: str, images: str | None, samples: int | None, seed: int, regions: str,
                t: int, k: int, num_steps: int, jive: dict, complements: bool = True, t_edit: int | None = None,
                precision: str = MiningSettings.precision) -> dict:
    """Check everything (``plan_run``), then open the run store; returns its directory, image count, region
    and block names."""
    plan = plan_run(out, model, images, samples, seed, regions, t, k, num_steps, jive, complements, t_edit, precision)
    config = plan["config"]
    store = RunStore.open_or_create(out, config, plan["masks"], plan["pixels"], plan["x_T"])
    return {"run_dir": str(store.run_dir), "images": len(config.images), "regions": list(config.regions),
            "blocks": list(config.blocks), "run_id": store.run_id}
