"""The per-image steps of a mining run, each the only writer of its chunks in the run store.

Each task first checks its completion marks and returns at once when the work is already in
the store, so a resumed run recomputes nothing that is complete. Each returns
``{"computed": n, "skipped": m, "seconds": ...}``, counting the units of its stage (a latent,
an image's subspace blocks, a split).
"""

from __future__ import annotations

import time

from prefect import task

from localedit.core.ddim import denoise
from localedit.core.mining import Latent, latent_at, region_subspaces, split_subspaces
from localedit.store.runs import RunStore
from localedit.utils.pixels import to_unit
from tasks.runtime import GPU_TASK_OPTIONS, TASK_OPTIONS, cached_model, jacobian_threads, use_thread_share

SKIPPED = {"computed": 0, "skipped": 1, "seconds": 0.0}


def _computed(start: float) -> dict:
    return {"computed": 1, "skipped": 0, "seconds": time.perf_counter() - start}


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
        image = to_unit(denoise(model, noise, config.num_steps, clip_sample=True)[0])
        latent = latent_at(model, image, config.t, config.num_steps)
    else:
        latent = latent_at(model, store.image(index), config.t, config.num_steps)
        image = None
    store.write_latent(index, latent.x_T[0], latent.x_t[0], time.perf_counter() - start, image)
    return _computed(start)


@task(name="image-subspaces", task_run_name="subspaces-{index}", **GPU_TASK_OPTIONS)
def image_subspaces(run_dir: str, index: int) -> dict:
    """Top-k subspaces of the masked Jacobians d(mask * eps)/dh of every block (regions and complements)
    of one image that the store still lacks, all from one linearisation at the image's x_t.

    One task per image, not per block: the blocks share the linearisation and one stack of
    tangents, and the task holds the process's Jacobian lock with all its cores. A resumed run
    computes only the blocks not yet marked; each block's subspace is the same whichever blocks
    share the call (``localedit.core.jacobian.subspaces``).
    """
    store = RunStore(run_dir)
    config = store.config
    blocks = store.pending_blocks(index)
    if not blocks:
        return {"computed": 0, "skipped": len(config.blocks), "seconds": 0.0}
    use_thread_share()
    model = cached_model(config.model_source, config.model_fingerprint)
    latent = Latent(store.x_T(index)[None], store.x_t(index)[None].to(model.device), config.t)
    regions = [store.block_region(block) for block in blocks]
    with jacobian_threads():  # the shared U-Net's h hooks, and forward AD, one thread at a time
        start = time.perf_counter()
        found = region_subspaces(model, latent, regions, config.k)
    seconds = time.perf_counter() - start
    store.write_subspaces(index, dict(zip(blocks, found)), seconds)
    return {"computed": len(blocks), "skipped": len(config.blocks) - len(blocks), "seconds": seconds}


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
