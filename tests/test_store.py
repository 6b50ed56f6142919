"""The run store: layout readable by xarray, one writer per chunk, marks after chunks, atomic creation."""

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from localedit.core.jacobian import Subspace
from localedit.core.jive import JIVE
from localedit.core.mining import Split
from localedit.store.runs import STORE_NAME, RunConfig, RunStore, run_lock


def small_config(n: int = 3, k: int = 2, **changes) -> RunConfig:
    config = dict(
        model_source="in-memory", model_fingerprint="0123456789abcdef", resolution=8, channels=3,
        h_shape=(4, 2, 2), regions=("eyes", "mouth"), images=tuple(f"img-{i}" for i in range(n)),
        image_sources=(None,) * n, t=501, k=k, num_steps=10, seed=0,
        jive={"joint_rank": None, "individual_ranks": None, "max_angle_deg": 30.0},
    )
    return RunConfig(**(config | changes))


def box_masks(config: RunConfig) -> torch.Tensor:
    masks = torch.zeros(len(config.regions), config.resolution, config.resolution)
    for a in range(len(config.regions)):
        masks[a, 2 * a: 2 * a + 2, 1:7] = 1
    return masks


def orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed))).Q


def subspace(d: int, k: int, seed: int) -> Subspace:
    return Subspace(orthonormal(d, k, seed), torch.linspace(2.0, 1.0, k), 7, 1e-4, True, 0.1)


@pytest.fixture
def store(tmp_path):
    config = small_config()
    x_T = torch.randn(3, 3, 8, 8)
    return RunStore.create(tmp_path / "run", config, box_masks(config), x_T=x_T)


def test_layout_is_preallocated_chunked_per_task_and_named_for_xarray(store):
    config = store.config
    n, r, d, k = 3, 2, config.h_dim, config.k
    group = store.group
    assert group["subspace_basis"].shape == (n, r, d, k)
    assert group["subspace_basis"].chunks == (1, 1, d, k)
    assert group["individual_basis"].chunks == (1, 1, d, k)
    assert group["joint_basis"].chunks == (1, d, k)
    assert group["done_subspace"].chunks == (1, r)  # an image's blocks are marked in one write
    for name, array in group.arrays():
        assert array.metadata.dimension_names is not None and None not in array.metadata.dimension_names, name
    ds = xr.open_zarr(store.path, consolidated=False)
    assert ds.sizes["image"] == n and ds.sizes["region"] == r and ds.sizes["block"] == r and ds.sizes["h"] == d
    assert ds["subspace_basis"].dims == ("image", "block", "h", "component")
    assert ds.attrs["model_fingerprint"] == config.model_fingerprint
    assert ds.attrs["regions"] == ["eyes", "mouth"] and ds.attrs["k"] == 2 and ds.attrs["t"] == 501
    assert RunStore(store.run_dir).config == config


def test_labels_are_coordinates_so_xarray_selects_regions_blocks_and_images_by_name(store):
    d = store.config.h_dim
    subs = {block: subspace(d, 2, seed=a) for a, block in enumerate(store.config.blocks)}
    store.write_subspaces(1, subs, seconds=1.0)
    jive = JIVE().fit([orthonormal(d, 2, seed) for seed in (1, 2)], [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])])
    store.write_split(1, Split.from_jive(jive), seconds=0.5)
    ds = xr.open_zarr(store.path, consolidated=False)
    assert ds["region"].values.tolist() == ["eyes", "mouth"] and ds["block"].values.tolist() == ["eyes", "mouth"]
    assert ds["image"].values.tolist() == ["img-0", "img-1", "img-2"]
    eyes = ds.sel(region="eyes")
    np.testing.assert_array_equal(eyes["masks"].values, box_masks(store.config)[0].numpy())
    rank = jive.individual_bases_[0].shape[1]
    np.testing.assert_allclose(eyes["individual_basis"].sel(image="img-1").values[:, :rank],
                               jive.individual_bases_[0].numpy(), rtol=0, atol=1e-6)
    assert int(eyes["individual_rank"].sel(image="img-1")) == rank
    mouth = ds.sel(block="mouth", image="img-1")
    np.testing.assert_allclose(mouth["subspace_basis"].values, subs["mouth"].basis.numpy(), rtol=0, atol=1e-6)
    # one variable per statistic, each with its own dtype
    assert int(mouth["subspace_iterations"]) == 7 and bool(mouth["subspace_converged"])
    assert float(mouth["subspace_residual"]) == pytest.approx(1e-4)
    assert ds["subspace_iterations"].dtype == np.int32 and ds["subspace_converged"].dtype == bool
    assert "subspace_stats" not in ds and "stat" not in ds.sizes


def test_a_layout_1_store_still_opens_reads_and_resumes(tmp_path):
    """tests/fixtures/run-store-v1: a store written before labels became coordinates (its README says what it holds)."""
    shutil.copytree(Path(__file__).parent / "fixtures" / "run-store-v1", tmp_path / "run")
    store = RunStore(tmp_path / "run")
    assert store.format == "localedit-run/1" and store.config.blocks == ("eyes", "mouth", "not_eyes", "not_mouth")
    assert [r.pixels for r in store.regions] == [12, 12]
    assert store.progress() == {"latent": (1, 2), "subspace": (5, 8), "split": (1, 2)}
    for a, block in enumerate(store.config.blocks):
        basis, values = store.subspace(0, block)
        torch.testing.assert_close(basis, orthonormal(8, 2, a))
        torch.testing.assert_close(values, torch.tensor([2.0, 1.0]) * (a + 1))
    split = store.split(0)
    assert split.ranks == {"joint": 1, "individual": [1, 1]} and split.joint.shape == (8, 1)
    # Resuming writes the missing blocks in the old layout: statistics into its (image, block, stat) array.
    assert store.pending_blocks(1) == ["mouth", "not_eyes", "not_mouth"]
    store.write_subspaces(1, {"not_mouth": subspace(8, 2, seed=4)}, seconds=0.5)
    reopened = RunStore(tmp_path / "run")
    assert reopened.pending_blocks(1) == ["mouth", "not_eyes"]
    torch.testing.assert_close(reopened.subspace(1, "not_mouth")[0], orthonormal(8, 2, 4))
    np.testing.assert_allclose(reopened.group["subspace_stats"][1, 3], [7, 1e-4, 1])
    ds = xr.open_zarr(reopened.path, consolidated=False)  # xarray reads it too, without coordinates
    assert ds["subspace_stats"].dims == ("image", "block", "stat") and "region" not in ds.coords


def test_complement_blocks_get_their_own_subspace_chunks(tmp_path):
    config = small_config(complements=True)
    masks = box_masks(config)
    store = RunStore.create(tmp_path / "run", config, masks)
    assert config.blocks == ("eyes", "mouth", "not_eyes", "not_mouth")
    assert store.group["subspace_basis"].shape[1] == 4 and store.progress()["subspace"] == (0, 12)
    torch.testing.assert_close(store.block_region("not_mouth").mask, 1 - masks[1])
    store.write_subspaces(2, {"not_eyes": subspace(config.h_dim, 2, seed=3)}, seconds=0.1)
    assert store.subspace_done(2, "not_eyes") and not store.subspace_done(2, "eyes")
    assert store.pending_blocks(2) == ["eyes", "mouth", "not_mouth"] and store.pending_blocks(1) == list(config.blocks)
    with pytest.raises(KeyError, match="not_hair"):
        store.subspace(0, "not_hair")
    assert RunStore(store.run_dir).config.complements is True


def test_a_mark_is_written_only_with_its_chunk(store):
    assert not store.subspace_done(1, "mouth")
    assert store.progress() == {"latent": (0, 3), "subspace": (0, 6), "split": (0, 3)}
    sub = subspace(store.config.h_dim, 2, seed=1)
    store.write_subspaces(1, {"mouth": sub}, seconds=0.25)
    reopened = RunStore(store.run_dir)
    assert reopened.subspace_done(1, "mouth") and not reopened.subspace_done(1, "eyes")
    basis, sv = reopened.subspace(1, "mouth")
    torch.testing.assert_close(basis, sub.basis)
    torch.testing.assert_close(sv, sub.singular_values)
    assert reopened.progress()["subspace"] == (1, 6)
    assert reopened.group["done_subspace"][1, 1] == pytest.approx(0.25)  # the mark holds the task's seconds
    # The chunk of another (image, region) was never touched: each task is its only writer.
    assert not (store.path / "subspace_basis" / "c" / "1" / "0").exists()


def test_an_images_blocks_are_written_together(store):
    subs = {block: subspace(store.config.h_dim, 2, seed=a) for a, block in enumerate(store.config.blocks)}
    store.write_subspaces(2, subs, seconds=3.0)
    reopened = RunStore(store.run_dir)
    assert reopened.pending_blocks(2) == [] and reopened.group["done_subspace"][2].tolist() == [3.0, 3.0]
    for block, sub in subs.items():
        torch.testing.assert_close(reopened.subspace(2, block)[0], sub.basis)


def test_split_round_trip_pads_and_trims_ranks(store):
    d = store.config.h_dim
    bases = [orthonormal(d, 2, seed) for seed in (1, 2)]
    jive = JIVE().fit(bases, [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])])
    store.write_split(0, Split.from_jive(jive), seconds=0.5)
    split = RunStore(store.run_dir).split(0)
    assert split.joint.shape == (d, jive.ranks_["joint"])
    for a in range(2):
        torch.testing.assert_close(split.individual[a], jive.individual_bases_[a])
        torch.testing.assert_close(split.individual_singular_values[a], jive.individual_singular_values_[a])


def test_sampled_images_keep_their_seeded_x_T(tmp_path):
    config = small_config()
    x_T = torch.randn(3, 3, 8, 8)
    store = RunStore.create(tmp_path / "run", config, box_masks(config), x_T=x_T)
    torch.testing.assert_close(store.x_T(2), x_T[2])
    assert not store.latent_done(2)


def test_resume_needs_equal_settings(store):
    config = store.config
    assert RunStore.open_or_create(store.run_dir, config, box_masks(config)).run_id == store.run_id
    moved = RunStore.open_or_create(store.run_dir, small_config(model_source="/elsewhere"), box_masks(config))
    assert moved.run_id == store.run_id  # the fingerprint, not the path, identifies the model
    with pytest.raises(ValueError, match="other settings.*k: 2 != 3"):
        RunStore.open_or_create(store.run_dir, small_config(k=3), box_masks(config))
    with pytest.raises(FileExistsError):
        RunStore.create(store.run_dir, config, box_masks(config))


def test_other_settings_are_named_as_the_user_gave_them():
    """Found by a second new user: the refusal dumped whole internal dicts and tuples of None."""
    jive = {"joint_rank": None, "individual_ranks": 0, "max_angle_deg": 30.0}
    assert small_config(jive=jive).differences(small_config(n=4, k=3, seed=1)) == [
        "samples: 3 != 4", "individual_rank: 0 != None", "k: 2 != 3", "seed: 0 != 1"]
    files = small_config(n=4, images=("a.png", "b.png", "c.png", "d.png"), image_sources=("/x/a.png",) * 4,
                         model_fingerprint="fedcba9876543210", resolution=16, complements=True)
    assert small_config().differences(files) == [
        "model: fingerprint 0123456789abcdef != fedcba9876543210",
        "samples: 3 != images: 4 files (a.png, b.png, c.png, ...)", "paper_jive: True != False"]
    assert small_config().differences(small_config(model_source="/elsewhere")) == []


def test_only_the_run_lock_holder_removes_temporary_chunks(store):
    """Reopening a store removes nothing (the file may be a concurrent writer's in-flight chunk); the holder of
    the run lock does, and a second run on the folder is refused while the lock is held."""
    leftover = store.path / "subspace_basis" / "c" / "0" / "0.1234.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    RunStore.open_or_create(store.run_dir, store.config, box_masks(store.config))
    assert leftover.exists()
    with run_lock(store.run_dir):
        with pytest.raises(ValueError, match=rf"being written by another run \(process {os.getpid()}@"):
            with run_lock(store.run_dir):
                pass
        store.discard_partials()
    assert not leftover.exists()
    with run_lock(store.run_dir):  # released when its holder leaves (or dies: it is an flock)
        pass


def test_non_finite_results_are_never_stored_or_marked(store):
    """A NaN latent fails its task: nothing is written, nothing is marked, so no later task reads it."""
    x, x_t = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    x_t[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the latent x_t of image 1 has 1 non-finite values"):
        store.write_latent(1, x, x_t, 1.0)
    assert not store.latent_done(1) and np.isfinite(store.group["x_T"][1]).all() and (store.group["x_T"][1] != 0).any()
    bad = Subspace(torch.full((16, 2), float("inf")), torch.ones(2), 1, 0.0, True, 0.1)
    good = subspace(store.config.h_dim, 2, seed=1)
    with pytest.raises(ValueError, match="the eyes subspace of image 0 has 32 non-finite values"):
        store.write_subspaces(0, {"mouth": good, "eyes": bad}, 1.0)
    # The image's blocks are checked before any is written: the good one is not stored or marked either.
    assert store.pending_blocks(0) == ["eyes", "mouth"] and not store.group["subspace_basis"][0].any()


def test_paper_mode_needs_no_complement_of_a_whole_image_region(tmp_path):
    """Case rgba-mask-and-whole-region (2): without complement blocks, a whole-image region is a usable block."""
    config = small_config(complements=False)
    masks = box_masks(config)
    masks[0] = 1
    store = RunStore.create(tmp_path / "run", config, masks)
    assert store.block_region("eyes").pixels == 64 and store.block_region("mouth").pixels == 12


def test_wrong_input_shapes_are_refused_before_writing(tmp_path):
    config = small_config()
    with pytest.raises(ValueError, match=r"masks has shape \(5, 8, 8\); this run needs \(2, 8, 8\)"):
        RunStore.create(tmp_path / "run", config, torch.zeros(5, 8, 8))
    with pytest.raises(ValueError, match="images has shape"):
        RunStore.create(tmp_path / "run", config, box_masks(config), images=torch.zeros(2, 3, 8, 8))
    assert not (tmp_path / "run").exists()


def test_a_crash_while_creating_leaves_nothing(tmp_path, monkeypatch):
    config = small_config()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("localedit.store.runs.os.rename", crash)
    with pytest.raises(OSError, match="disk full"):
        RunStore.create(tmp_path / "run", config, box_masks(config))
    assert list((tmp_path / "run").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no run store"):
        RunStore(tmp_path / "run")


def test_not_a_run_store(tmp_path):
    import zarr

    zarr.create_group(tmp_path / "run" / STORE_NAME, zarr_format=3, attributes={"format": "other"})
    with pytest.raises(ValueError, match="not a localedit run store"):
        RunStore(tmp_path / "run")


def test_marks_hold_task_seconds_and_nan_until_done(store):
    marks = store.group["done_latent"][:]
    assert np.isnan(marks).all()
    store.write_latent(0, torch.zeros(3, 8, 8), torch.ones(3, 8, 8), seconds=1.5, image=torch.full((3, 8, 8), 0.5))
    assert store.latent_done(0) and not math.isnan(store.group["done_latent"][0])
    torch.testing.assert_close(store.image(0), torch.full((3, 8, 8), 0.5))
    torch.testing.assert_close(store.x_t(0), torch.ones(3, 8, 8))
