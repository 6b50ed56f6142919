"""The per-image steps of a mining run, each the only writer of its chunks in the run store.

Each task first checks its completion mark and returns at once when the work is already in
the store, so a resumed run recomputes nothing that is complete. Each returns
``{"status": "computed" | "skipped", "seconds": ...}``.
"""

from __future__ import annotations

import time

from prefect import task

from localedit import forward_ad
from localedit.ddim import denoise
from localedit.mining import Latent, latent_at, region_subspaces, split_subspaces
from localedit.store import RunStore
from tasks.runtime import GPU_TASK_OPTIONS, TASK_OPTIONS, cached_model, use_thread_share

SKIPPED = {"status": "skipped", "seconds": 0.0}


def _computed(start: float) -> dict:
    return {"status": "computed", "seconds": time.perf_counter() - start}


@task(name="invert-image", task_run_name="invert-{index}", **GPU_TASK_OPTIONS)
def invert_image(run_dir: str, index: int) -> dict:
    """DDIM-invert image ``index`` to x_T (a sampled image already has one) and denoise it to x_t."""
    store = RunStore(run_dir)
    if store.latent_done(index):
        return SKIPPED
    start = time.perf_counter()
    use_thread_share()
    config = store.config
    model = cached_model(config.model_source, config.model_fingerprint)
    if config.image_sources[index] is None:
        # Decode the seeded noise as a sample (x0 clipped), then invert it like a real image:
        # edits decode without clipping, so only an inverted x_T reproduces the image.
        noise = store.x_T(index)[None].to(model.device)
        image = (denoise(model, noise, config.num_steps, clip_sample=True)[0].clamp(-1, 1) + 1) / 2
        latent = latent_at(model, image, config.t, config.num_steps)
    else:
        latent = latent_at(model, store.image(index), config.t, config.num_steps)
        image = None
    store.write_latent(index, latent.x_T[0], latent.x_t[0], time.perf_counter() - start, image)
    return _computed(start)


@task(name="region-subspace", task_run_name="subspace-{index}-{region}", **GPU_TASK_OPTIONS)
def region_subspace(run_dir: str, index: int, region: str) -> dict:
    """Top-k subspace of the region-masked Jacobian d(mask * eps)/dh at the image's x_t (region: any block)."""
    store = RunStore(run_dir)
    if store.subspace_done(index, region):
        return SKIPPED
    use_thread_share()
    config = store.config
    model = cached_model(config.model_source, config.model_fingerprint)
    latent = Latent(store.x_T(index)[None], store.x_t(index)[None].to(model.device), config.t)
    with forward_ad.exclusive():  # the shared U-Net's h hooks, and forward AD, one thread at a time
        start = time.perf_counter()
        [subspace] = region_subspaces(model, latent, [store.block_region(region)], config.k)
    store.write_subspace(index, region, subspace, time.perf_counter() - start)
    return _computed(start)


@task(name="split-image", task_run_name="split-{index}", **TASK_OPTIONS)
def split_image(run_dir: str, index: int) -> dict:
    """JIVE of one image's region (and complement) subspaces into joint and individual bases."""
    store = RunStore(run_dir)
    if store.split_done(index):
        return SKIPPED
    start = time.perf_counter()
    use_thread_share()
    config = store.config
    blocks = [store.subspace(index, block) for block in config.blocks]
    R = len(config.regions)
    split = split_subspaces(blocks[:R], blocks[R:] if config.complements else None, config.jive)
    store.write_split(index, split, time.perf_counter() - start)
    return _computed(start)
