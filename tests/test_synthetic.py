import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from localedit.bundled.samples import load_image, load_samples, write_samples
from localedit.bundled.synthetic import CLOSED_EYE, FACTOR_SCOPE, FACTORS, render, sample_faces, sample_factors
from localedit.core.regions import load_presets, resolve_regions

SIZE = 32
# Head-position jitter: a nuisance variable of the generator, deliberately not an editable factor.
NUISANCE = {"jitter_x", "jitter_y"}


@pytest.fixture(scope="module")
def rows():
    return sample_factors(400, seed=11)


@pytest.fixture(scope="module")
def masks():
    return {name: resolve_regions(name, SIZE)[0].mask for name in load_presets()}


def _change_energy(rows, factor, seed=12):
    """Per-pixel squared change (summed over channels and images) when one factor is redrawn."""
    changed = rows.copy()
    changed[factor] = sample_factors(len(rows), seed=seed)[factor].to_numpy()
    return (render(changed, SIZE) - render(rows, SIZE)).pow(2).sum(1).sum(0)


def _share(energy, mask):
    return float((energy * mask).sum() / energy.sum())


def test_same_seed_same_faces_other_seed_differs():
    a, b, c = sample_faces(16, seed=3), sample_faces(16, seed=3), sample_faces(16, seed=4)
    assert torch.equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.factors, b.factors)
    assert not torch.equal(a.images, c.images)
    assert not np.allclose(a.factors[FACTORS].to_numpy(), c.factors[FACTORS].to_numpy())
    assert a.images.shape == (16, 3, SIZE, SIZE)
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_factor_scope_covers_every_factor_column(rows):
    assert set(rows.columns) == set(FACTOR_SCOPE) | NUISANCE
    assert set(FACTOR_SCOPE.values()) <= {"background", "face", "global"} | set(load_presets())


def _closed(rows):
    return torch.from_numpy((rows["eye_openness"] < CLOSED_EYE).to_numpy().copy())


def test_closed_eyes_draw_only_the_lid_and_open_eyes_show_white(rows, masks):
    # Skin under bright light or grey hair can be as light as an eye white, so an absolute
    # "near-white" threshold is unreliable; compare each face with the same face drawn closed.
    image, drawn_closed = render(rows, SIZE), render(rows.assign(eye_openness=0.0), SIZE)
    closed = _closed(rows)
    assert 50 < closed.sum() < len(rows) - 50
    # Below CLOSED_EYE nothing of the eye (white, iris, pupil) is drawn, whatever the openness.
    assert torch.equal(image[closed], drawn_closed[closed])
    # Open eyes put white/iris where a closed eye has its dark lid line.
    lighter = ((image.min(1).values - drawn_closed.min(1).values) * masks["eyes"]).flatten(1).amax(1)
    assert (lighter[~closed] > 0.2).all()


def test_iris_shows_exactly_when_eyes_are_open(rows, masks):
    changed = rows.assign(iris_color=(rows["iris_color"] + 1.5) % 3)
    diff = (render(changed, SIZE) - render(rows, SIZE)).abs().flatten(1).amax(1)
    closed = _closed(rows)
    assert (diff[closed] == 0).all()
    assert (diff[~closed] > 0.05).all()


@pytest.mark.parametrize(
    "factor", ["eye_openness", "iris_color", "mouth_curvature", "mouth_openness", "lip_redness", "fringe"]
)
def test_local_factor_changes_only_its_region(rows, masks, factor):
    region = FACTOR_SCOPE[factor]
    assert _share(_change_energy(rows, factor), masks[region]) >= 0.99


def test_hair_color_stays_in_the_hair_box_and_beside_the_face(rows, masks):
    # Hair hangs beside the face down to v ~ 0.57 (row 18), outside the hair box by design.
    sides = torch.zeros(SIZE, SIZE)
    sides[:18, :9] = 1
    sides[:18, 23:] = 1
    energy = _change_energy(rows, "hair_color")
    assert _share(energy, torch.maximum(masks["hair"], sides)) >= 0.99
    assert _share(energy, masks["hair"]) > 0.8
    assert _share(energy, masks["mouth"]) < 1e-6


def test_lighting_is_global(rows, masks):
    energy = _change_energy(rows, "lighting")
    shares = {name: _share(energy, masks[name]) for name in ("eyes", "mouth", "hair")}
    assert all(s > 0.1 for s in shares.values()), shares
    assert sum(shares.values()) < 0.9  # the rest of the face changes too


def test_bundled_samples_cover_closed_eyes_and_the_expression_range():
    images, factors = load_samples()
    assert images.shape == (len(factors), 3, SIZE, SIZE)
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
    assert set(factors.columns) >= {"file", "subset"} | set(FACTORS)
    for subset in ("mine", "heldout"):
        subset_images, f = load_samples(subset)
        assert len(f) == 24 and (f["subset"] == subset).all()
        assert torch.equal(subset_images, images[torch.from_numpy((factors["subset"] == subset).to_numpy().copy())])
        closed = f["eye_openness"] < CLOSED_EYE
        assert 0 < closed.sum() < len(f)
        assert f["expression"].min() < -0.66 and f["expression"].max() > 0.66
    # The factor table describes the pixels: re-rendering it reproduces the PNGs up to 8-bit rounding.
    rendered = render(factors.drop(columns=["file", "subset"]), SIZE)
    assert (rendered - images).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="unknown subset"):
        load_samples("train")


def test_write_samples_is_deterministic(tmp_path):
    a = write_samples(tmp_path / "a", n_mine=6, n_heldout=6, seed=5)
    b = write_samples(tmp_path / "b", n_mine=6, n_heldout=6, seed=5)
    pd.testing.assert_frame_equal(a, b)
    images, factors = load_samples(root=tmp_path / "a")
    assert list(factors["file"][:2]) == ["mine_000.png", "mine_001.png"]
    assert images.shape == (12, 3, SIZE, SIZE)
    assert not a[FACTORS].duplicated().any()  # the subsets share no face


def test_load_image_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "broken.png", SIZE)
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "missing.png", SIZE)
    Image.new("RGB", (64, 48)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="64x48 pixels; expected 32x32"):
        load_image(tmp_path / "big.png", SIZE)
    Image.new("L", (SIZE, SIZE), 255).save(tmp_path / "grey.png")
    assert torch.equal(load_image(tmp_path / "grey.png", SIZE), torch.ones(3, SIZE, SIZE))
