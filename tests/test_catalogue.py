"""The catalogue: built from a run's per-image splits, opened as a DataFrame plus unit vectors."""

import warnings

import pandas as pd
import pytest
import torch
import xarray as xr

from localedit.core.editing import ALPHA_RANGE
from localedit.core.jive import JIVE
from localedit.core.mining import Split
from localedit.core.models import DiffusionModel
from localedit.core.settings import EditSettings
from localedit.store import catalogue
from localedit.store.runs import RunStore
from tests.test_store import box_masks, orthonormal, small_config

N = 4


def fill_run(run_dir, n: int = N) -> RunStore:
    """A run whose images share one direction per region (plus per-image noise), split by JIVE."""
    config = small_config(n=n, k=3, h_shape=(8, 4, 4))
    store = RunStore.create(run_dir, config, box_masks(config))
    d = config.h_dim
    shared = orthonormal(d, 3, seed=100)  # eyes, mouth and a joint direction
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        bases = [torch.linalg.qr(torch.cat([shared[:, [2, a]], torch.randn(d, 1, generator=g)], 1)).Q
                 for a in range(2)]
        jive = JIVE().fit(bases, [torch.tensor([3.0, 2.0, 0.5])] * 2)
        store.write_split(i, Split.from_jive(jive), seconds=0.1)
    return store


@pytest.fixture
def built(tmp_path):
    store = fill_run(tmp_path / "run")
    catalogue.build(store.run_dir, threshold=0.5, min_support=2)
    return store


def test_frame_has_one_row_per_direction_with_the_documented_columns(built):
    cat = catalogue.open(built.run_dir)
    frame = cat.frame
    assert {"id", "region", "kind", "rank", "singular_value", "consistency", "support", "t",
            "model_fingerprint", "run_id", "created_at"} <= set(frame.columns)
    assert frame["id"].is_unique and len(cat) == len(frame) > 0
    assert set(frame["kind"]) == {"individual", "joint"}
    assert set(frame["region"]) == {"eyes", "mouth", "eyes+mouth"}
    assert (frame["t"] == 501).all() and (frame["model_fingerprint"] == "0123456789abcdef").all()
    assert (frame["run_id"] == built.run_id).all()
    assert pd.api.types.is_datetime64_any_dtype(frame["created_at"])
    assert (frame["support"] >= 2).all() and frame["support"].le(N).all()
    for _, group in frame.groupby(["region", "kind"]):
        assert list(group["rank"]) == list(range(len(group)))  # 0 = strongest
        assert group["singular_value"].is_monotonic_decreasing
    eyes = frame.query("region == 'eyes' and kind == 'individual'")
    assert list(eyes["id"])[0] == "eyes/individual/0"
    assert frame.query("kind == 'joint'")["id"].iloc[0] == "joint/0"


def test_vectors_are_unit_and_orthogonal_within_region_and_kind(built):
    cat = catalogue.open(built.run_dir)
    for _, group in cat.frame.groupby(["region", "kind"]):
        V = torch.stack([cat.vector(i) for i in group["id"]], dim=1)
        assert V.shape[0] == built.config.h_dim and V.dtype == torch.float32
        torch.testing.assert_close(V.T @ V, torch.eye(V.shape[1]), atol=1e-5, rtol=0)


def test_the_shared_directions_are_recovered(built):
    cat = catalogue.open(built.run_dir)
    shared = orthonormal(built.config.h_dim, 3, seed=100)
    assert abs(float(cat.vector("eyes/individual/0") @ shared[:, 0])) > 0.99
    assert abs(float(cat.vector("mouth/individual/0") @ shared[:, 1])) > 0.99
    assert abs(float(cat.vector("joint/0") @ shared[:, 2])) > 0.99
    top = cat.frame.set_index("id").loc["eyes/individual/0"]
    assert top["support"] == N and top["consistency"] > 0.95


def test_the_store_labels_each_direction_vector_with_its_id(built):
    cat = catalogue.open(built.run_dir)
    ds = xr.open_zarr(built.path, consolidated=False)
    assert ds["direction"].values.tolist() == cat.frame["id"].tolist()
    for id_ in cat.frame["id"]:
        torch.testing.assert_close(torch.from_numpy(ds["directions"].sel(direction=id_).values), cat.vector(id_))


def test_attrs_and_regions(built, tmp_path):
    cat = catalogue.open(built.run_dir / catalogue.CATALOGUE_NAME)  # the parquet path works too
    assert cat.attrs["model_fingerprint"] == "0123456789abcdef" and cat.attrs["model_source"] == "in-memory"
    assert cat.attrs["t"] == 501 and cat.attrs["k"] == 3 and cat.attrs["num_steps"] == 10
    assert cat.attrs["regions"] == ["eyes", "mouth"] and len(cat.attrs["images"]) == N
    assert cat.attrs["min_support"] == 2 and cat.attrs["threshold"] == 0.5
    masks = box_masks(built.config)
    torch.testing.assert_close(cat.regions["eyes"].mask, masks[0])
    torch.testing.assert_close(cat.regions["eyes+mouth"].mask, masks.amax(0))


def test_a_model_with_another_fingerprint_is_refused(built):
    cat = catalogue.open(built.run_dir)
    same = DiffusionModel(unet=None, scheduler=None, fingerprint="0123456789abcdef", source="x")
    cat.check_model(same)
    other = DiffusionModel(unet=None, scheduler=None, fingerprint="fedcba9876543210", source="other-model")
    with pytest.raises(ValueError, match="mined on model 0123456789abcdef.*fedcba9876543210.*do not apply"):
        cat.check_model(other)


def test_unknown_direction_and_missing_catalogue(built, tmp_path):
    cat = catalogue.open(built.run_dir)
    with pytest.raises(KeyError, match="no direction 'eyes/individual/99'.*joint/0"):
        cat.vector("eyes/individual/99")
    with pytest.raises(FileNotFoundError, match=r"no catalogue .*`localedit mine --samples N --out .*nowhere`"):
        catalogue.open(tmp_path / "nowhere")


def test_an_incomplete_run_has_no_catalogue(tmp_path):
    config = small_config(n=2)
    store = RunStore.create(tmp_path / "run", config, box_masks(config))
    # Found by a second new user: the hint suggested a new `mine` (lacking --samples) instead of the resume.
    with pytest.raises(FileNotFoundError, match="unfinished \\(0 of 2 images mined.*rerun the `localedit mine` command"):
        catalogue.open(store.run_dir)
    with pytest.raises(ValueError, match="incomplete.*0 of 2"):
        catalogue.build(store.run_dir)
    assert not (store.run_dir / catalogue.CATALOGUE_NAME).exists()


def test_a_failing_stage_closes_the_progress_bar_and_writes_no_catalogue(tmp_path, monkeypatch):
    """Found in review: a build that raised left its bar open (a stale line on the console)."""
    from tqdm.auto import tqdm

    store = fill_run(tmp_path / "run")

    def fail(*_):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(catalogue, "_contrast_rows", fail)
    with pytest.raises(RuntimeError, match="out of memory") as raised:
        catalogue.build(store.run_dir, progress=True)
    # The traceback keeps build's frame, and so an unclosed bar, alive (as in an interactive session).
    assert raised.traceback and not [bar for bar in tqdm._instances if bar.desc == "catalogue"]
    assert not (store.run_dir / catalogue.CATALOGUE_NAME).exists()


def test_rebuilding_with_a_stricter_filter_replaces_the_catalogue(built):
    first = catalogue.open(built.run_dir)
    catalogue.build(built.run_dir, threshold=0.5, min_support=N + 1)  # capped at the image count
    strict = catalogue.open(built.run_dir)
    assert strict.attrs["min_support"] == N
    assert (strict.frame["support"] == N).all()
    assert len(strict) <= len(first)
    assert strict._vectors.shape[0] == len(strict)


def test_a_catalogue_is_current_only_for_the_settings_and_format_it_was_built_with(built, monkeypatch):
    run_dir = built.run_dir
    assert catalogue.is_current(run_dir, threshold=0.5, min_support=2, with_model=False)
    assert not catalogue.is_current(run_dir, threshold=0.6, min_support=2, with_model=False)
    assert not catalogue.is_current(run_dir, threshold=0.5, min_support=3, with_model=False)
    assert not catalogue.is_current(run_dir, threshold=0.5, min_support=2)  # built without a model
    assert not catalogue.is_current(run_dir, threshold=0.5, min_support=2, with_model=False,
                                    edit=EditSettings("from_t_edit"))
    monkeypatch.setattr(catalogue, "CATALOGUE_FORMAT", catalogue.CATALOGUE_FORMAT + 1)  # a newer localedit
    assert not catalogue.is_current(run_dir, threshold=0.5, min_support=2, with_model=False)
    monkeypatch.undo()
    # min_support is stored as the build capped it, so asking for more than the images again is the same build
    with pytest.warns(UserWarning, match=f"min_support {N + 1} exceeds the run's {N} image"):
        catalogue.build(run_dir, threshold=0.5, min_support=N + 1)
    # a kept catalogue says again what its build said of the run's size (a new user missed it on a resume)
    with pytest.warns(UserWarning, match=f"min_support {N + 7} exceeds the run's {N} image"):
        assert catalogue.is_current(run_dir, threshold=0.5, min_support=N + 7, with_model=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a catalogue that is not kept leaves the saying to its build
        assert not catalogue.is_current(run_dir, threshold=0.6, min_support=N + 7, with_model=False)
    assert catalogue.size_notes(N, N, with_model=True) == [
        f"region and joint variation need at least 10 images; this run has {N}, so the catalogue has none of their "
        "directions (mine more images)"]
    assert catalogue.size_notes(10, 10, with_model=True) == [] == catalogue.size_notes(N, N, with_model=False)
    (run_dir / catalogue.CATALOGUE_NAME).unlink()  # a build that stopped before its parquet was written
    assert not catalogue.is_current(run_dir, threshold=0.5, min_support=N, with_model=False)


@pytest.mark.parametrize("n", [12, 4])
def test_with_the_model_the_most_local_family_takes_the_individual_ids(tmp_path, tiny_model, n, monkeypatch):
    """Region variation (with enough images: 10), region contrast and JIVE rows; per region, the family
    whose top direction edited the run's images most locally (no probe: no purity) is listed as
    eyes/individual/r; the top LABEL_RANKS of each family are read at matched strength; the
    region-variation vectors are the estimator's own on the images' h."""
    from localedit.core.hspace import encode, h_shape
    from localedit.core.variation import RegionVariation

    monkeypatch.setattr(catalogue, "CONTRAST_IMAGES", 1)  # a random U-Net's flat spectrum converges slowly; one image will do
    size = tiny_model.resolution
    config = small_config(n=n, k=3, h_shape=h_shape(tiny_model.unet), resolution=size,
                          model_fingerprint=tiny_model.fingerprint, num_steps=4)
    store = RunStore.create(tmp_path / "run", config, box_masks(config))
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        x = torch.randn(3, size, size, generator=g)
        store.write_latent(i, x, x, seconds=0.1)
    d = config.h_dim
    for i in range(n):
        bases = [orthonormal(d, 3, seed=10 * i + a) for a in range(2)]
        store.write_split(i, Split.from_jive(JIVE(joint_rank=0).fit(bases, [torch.tensor([3.0, 2.0, 1.0])] * 2)), 0.1)
    catalogue.build(store.run_dir, threshold=0.01, min_support=1, model=tiny_model)
    cat = catalogue.open(store.run_dir)
    frame = cat.frame
    for region in ("eyes", "mouth"):
        rows = frame[frame["region"] == region]
        ours = {"region_variation"} if n >= RegionVariation().min_images else set()
        assert set(rows["method"]) == ours | {"region_contrast", "jive_individual"}
        top = rows[rows["rank"] == 0].set_index("method")["edit_locality"]
        chosen = rows[rows["id"] == f"{region}/individual/0"]["method"].item()
        assert top[chosen] == top.max()
        read = rows["rank"] < catalogue.LABEL_RANKS
        assert rows.loc[read, "edit_locality"].between(0, 1).all() and rows.loc[~read, "edit_locality"].isna().all()
        assert rows.loc[read, "edit_alpha"].between(*ALPHA_RANGE).all()  # read at (near) matched strength
    if n < RegionVariation().min_images:
        return
    x_t = torch.stack([store.x_t(i) for i in range(n)])
    fit = RegionVariation(n_directions=3).fit(encode(tiny_model.unet, x_t, config.t).h, store.regions)
    mouth = frame[(frame["region"] == "mouth") & (frame["method"] == "region_variation") & (frame["rank"] == 1)]
    assert torch.allclose(cat.vector(mouth["id"].item()), fit.directions_[1][:, 1], atol=1e-5)
    assert frame["label"].eq("").all()  # no probe given: no labels


def test_a_local_but_impure_family_loses_the_individual_ids_to_a_pure_one():
    """The family choice weighs the probe's purity: 0.95 local moving the wrong factor loses to 0.85 local and pure;
    without a probe reading (purity NaN) locality alone decides; unread lower ranks keep their family ids. The
    joint family moving the global factors most is joint/r."""
    from localedit.evaluation.labels import Reading

    v = torch.zeros(4)
    found = [("eyes", "region_contrast", {}, v), ("eyes", "region_contrast", {}, v), ("eyes", "region_variation", {}, v),
             ("mouth", "region_contrast", {}, v), ("mouth", "region_variation", {}, v), ("eyes+mouth", "jive_joint", {}, v),
             ("eyes+mouth", "joint_variation", {}, v)]
    nan = float("nan")
    readings = [Reading("skin_tone", 0.4, 0.95, 0.6, 0.1), None, Reading("eye_openness", 0.8, 0.85, 0.87, 0.1),
                Reading("", nan, 0.9, nan, 0.1), Reading("", nan, 0.3, nan, 0.1),
                Reading("skin_tone", 0.3, 0.4, 0.36, 0.1), Reading("face_width", 0.4, 0.5, 0.67, 0.1)]
    ranks = catalogue._family_ranks(found)
    assert catalogue._ids(found, ranks, readings) == ["eyes/contrast/0", "eyes/contrast/1", "eyes/individual/0",
                                               "mouth/individual/0", "mouth/variation/0", "joint/jive/0", "joint/0"]
    unread = [None] * len(found)  # no model readings: the first family found keeps the ids (JIVE's joint)
    assert catalogue._ids(found, ranks, unread)[-2:] == ["joint/0", "joint/variation/0"]


def test_joint_directions_are_ranked_by_their_global_share_when_the_probe_read_them():
    """A joint family's read directions are reordered by the probe's global-factor share (rank 0: the most global);
    unread ones keep their place after them; local families and a family without a probe reading keep their order."""
    from localedit.evaluation.labels import Reading

    v = torch.zeros(4)
    nan = float("nan")
    found = [("eyes", "region_variation", {}, v), ("eyes", "region_variation", {}, v)]
    found += [("eyes+mouth", "joint_variation", {}, v)] * 4 + [("eyes+mouth", "jive_joint", {}, v)] * 2
    ranks = catalogue._family_ranks(found)
    readings = [Reading("eye_openness", 0.8, 0.9, 0.2, 0.1), Reading("iris_color", 0.8, 0.9, 0.9, 0.1),
                Reading("hair_color", 0.4, 0.3, 0.24, 0.1), Reading("face_width", 0.5, 0.3, 0.79, 0.1),
                Reading("lighting", 0.3, 0.3, 0.5, 0.1), None,
                Reading("", nan, 0.3, nan, 0.1), Reading("", nan, 0.3, nan, 0.1)]
    assert catalogue._rank_joint_by_reading(found, ranks, readings) == [0, 1, 2, 0, 1, 3, 0, 1]
    # the reordered family's new rank 0 (global share 0.79) beats JIVE's unread joint family for the joint/r ids
    assert catalogue._ids(found, catalogue._rank_joint_by_reading(found, ranks, readings), readings)[2:] == [
        "joint/2", "joint/0", "joint/1", "joint/3", "joint/jive/0", "joint/jive/1"]
