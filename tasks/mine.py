"""The per-image steps of a mining run, each the only writer of its chunks in the run store.

Each task first checks its completion marks and returns at once when the work is already in
the store, so a resumed run recomputes nothing that is complete. Each returns a ``StageCount``
of the units of its stage it computed and skipped (an image's latent, an image's subspace
blocks, a split). Latents are computed a chunk of images at a time
(one batch through the U-Net); an image's subspaces and their split in one task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from prefect import task

from localedit.core.ddim import denoise, invert
from localedit.core.jacobian import autocast_dtype
from localedit.core.mining import Latent, latent_at, region_subspaces, split_subspaces
from localedit.store.runs import RunStore
from localedit.utils.pixels import to_signed, to_unit
from tasks.runtime import GPU_TASK_OPTIONS, cached_model, use_thread_share


@dataclass(frozen=True)
class StageCount:
    """What mining tasks did: units of their stage computed and skipped, and the seconds spent computing."""

    computed: int
    skipped: int
    seconds: float = 0.0

    def __add__(self, other: "StageCount") -> "StageCount":
        return StageCount(self.computed + other.computed, self.skipped + other.skipped, self.seconds + other.seconds)


NOTHING = StageCount(0, 0)


# Images per inversion task. The U-Net on this CPU costs ~1.6x less per image at batch 4 than at
# batch 1 (one thread) and about the same at batch 8 (CPU time per image within the noise of a
# shared machine), and a run's images all need the same 125 forward passes (sampling, inversion,
# denoising to t), so a chunk of images goes through them as one batch. 4, not 8: an 8-image run
# then inverts on both cores of this machine instead of one while its subspace tasks wait.
# Fixed, not derived from the runner's slots, so every runner batches alike.
LATENT_BATCH = 4


def latent_chunks(n: int, size: int = LATENT_BATCH) -> list[tuple[int, int]]:
    """[start, stop) ranges of image indices, ``size`` at a time: one inversion task each."""
    return [(start, min(n, start + size)) for start in range(0, n, size)]


@task(name="invert-images", task_run_name="invert-{start}:{stop}", **GPU_TASK_OPTIONS)
def invert_images(run_dir: str, start: int, stop: int) -> StageCount:
    """DDIM-invert images ``start`` to ``stop - 1`` to x_T (a sampled image is first decoded from its seeded
    noise) and denoise them to x_t, as one batch through the U-Net.

    Only images without a latent are computed (a resumed run's batch is the ones still lacking;
    batched convolutions round a few 1e-7 differently from batch to batch, far below what the
    subspaces resolve). Counts are images.
    """
    store = RunStore(run_dir)
    pending = [i for i in range(start, stop) if not store.latent_done(i)]
    if not pending:
        return StageCount(0, stop - start)
    begin = time.perf_counter()
    use_thread_share()
    config = store.config
    model = cached_model(config.model_source, config.model_fingerprint)
    sampled = [i for i in pending if config.image_sources[i] is None]
    images = {}
    if sampled:
        # Decode the seeded noise as a sample (x0 clipped), then invert it like a real image:
        # edits decode without clipping, so only an inverted x_T reproduces the image.
        noise = torch.stack([store.x_T(i) for i in sampled]).to(model.device)
        images = dict(zip(sampled, to_unit(denoise(model, noise, config.num_steps, clip_sample=True))))
    batch = torch.stack([images[i] if i in images else store.image(i) for i in pending]).to(model.device)
    x_T = invert(model, to_signed(batch), config.num_steps)
    latent = latent_at(model, None, config.t, config.num_steps, x_T=x_T)
    seconds = time.perf_counter() - begin
    for j, i in enumerate(pending):  # each image's mark carries its share of the batch's time
        store.write_latent(i, latent.x_T[j], latent.x_t[j], seconds / len(pending), images.get(i))
    return StageCount(len(pending), stop - start - len(pending), seconds)


@task(name="subspaces-and-split", task_run_name="image-{index}", **GPU_TASK_OPTIONS)
def subspaces_and_split(run_dir: str, index: int) -> dict[str, StageCount]:
    """One image's subspaces, then their JIVE split; ``{"subspace": blocks, "split": the split}`` counts.

    One task per image, not one per block and stage: the blocks share one linearisation and one
    stack of tangents, and each task run costs its runner ~0.3 s (in process) to ~0.5 s (a Dask
    worker) of state round trips, so the split, 1-3% of the image's work, rides along instead of
    being a task run of its own (benchmarks/RESULTS.md). A retried or resumed task computes only
    what the store has not marked done.
    """
    store = RunStore(run_dir)
    return {"subspace": _subspaces(store, index), "split": _split(store, index)}


def _subspaces(store: RunStore, index: int) -> StageCount:
    """Top-k subspaces of the masked Jacobians d(mask * eps)/dh of every block (regions and complements)
    of one image that the store still lacks, all from one linearisation at the image's x_t.

    The products are reverse-mode only (``localedit.core.jacobian.MaskedJacobian``), so no
    lock: the images of the tasks running at once are computed side by side, each on its thread
    share (one core each by default). Each block's subspace is the same whichever blocks share the
    call (``localedit.core.jacobian.subspaces``), so a resumed image computes only the blocks not yet marked.
    """
    config = store.config
    blocks = store.pending_blocks(index)
    if not blocks:
        return StageCount(0, len(config.blocks))
    use_thread_share()
    model = cached_model(config.model_source, config.model_fingerprint)
    latent = Latent(store.x_T(index)[None], store.x_t(index)[None].to(model.device), config.t)
    regions = [store.block_region(block) for block in blocks]
    start = time.perf_counter()
    found = region_subspaces(model, latent, regions, config.k, precision=autocast_dtype(config.precision))
    seconds = time.perf_counter() - start
    store.write_subspaces(index, dict(zip(blocks, found)), seconds)
    return StageCount(len(blocks), len(config.blocks) - len(blocks), seconds)


def _split(store: RunStore, index: int) -> StageCount:
    """JIVE of one image's region (and complement) subspaces into joint and individual bases."""
    if store.split_done(index):
        return StageCount(0, 1)
    start = time.perf_counter()
    use_thread_share()
    config = store.config
    blocks = [store.subspace(index, block) for block in config.blocks]
    R = len(config.regions)
    split = split_subspaces(blocks[:R], blocks[R:] if config.complements else None, config.jive)
    store.write_split(index, split, time.perf_counter() - start)
    return StageCount(1, 0, time.perf_counter() - start)
