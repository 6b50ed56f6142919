import json

import numpy as np
import pandas as pd
import pytest
import torch

from localedit.bundled.probe import FactorProbe, factor_change, frechet_distance, load_probe, train_probe
from localedit.bundled.samples import load_samples
from localedit.bundled.synthetic import FACTORS, GENERATOR_VERSION, render, sample_faces

KEY_FACTORS = ["eye_openness", "mouth_curvature", "hair_color", "lighting"]


def _gaussian_samples(mean, cov, n, seed):
    """n samples whose sample mean and (unbiased) covariance are exactly mean and cov."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # whiten exactly
    return x @ torch.linalg.cholesky(cov).T + mean


@pytest.fixture(scope="module")
def shipped():
    return load_probe()


def test_frechet_distance_matches_closed_form():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    a = _gaussian_samples(mu_a, torch.diag(var_a), 500, seed=0)
    b = _gaussian_samples(mu_b, torch.diag(var_b), 300, seed=1)
    # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    expected = float((mu_a - mu_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)  # 5 + 4 + 1 + 0 = 10
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a.float().numpy(), a.float().numpy()) == pytest.approx(0, abs=1e-4)


def test_frechet_distance_full_covariance_and_shift():
    full = torch.tensor([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
    a = _gaussian_samples(torch.zeros(3, dtype=torch.float64), full, 400, seed=2)
    shift = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-9)
    # Scaling every direction by 2: tr(C + 4C - 2 * 2C) = tr(C).
    assert frechet_distance(a, 2 * a) == pytest.approx(float(full.trace()), rel=1e-9)
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(a, a[:, :2])


def test_tiny_probe_trains_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    probe = train_probe(
        steps=3, out_dir=tmp_path, seed=1, batch_size=8, progress=False, channels=(4, 8), feature_dim=16, eval_size=64
    )
    meta = json.loads((tmp_path / "probe.json").read_text())
    assert meta["factors"] == FACTORS and set(meta["heldout_r2"]) == set(FACTORS)
    assert meta["generator_version"] == GENERATOR_VERSION and meta["steps"] == 3 and meta["seed"] == 1
    assert meta["circular"] == ["background_hue"]
    loaded = load_probe(tmp_path)
    images = sample_faces(8, seed=99).images
    pd.testing.assert_frame_equal(probe.predict(images), loaded.predict(images), check_exact=True)
    assert torch.equal(probe.features(images), loaded.features(images))
    assert loaded.features(images).shape == (8, 16)


def test_probe_rejects_minus_one_to_one_images():
    probe = FactorProbe(FACTORS, [0.0] * len(FACTORS), [1.0] * len(FACTORS), channels=(4,), feature_dim=8)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        probe.predict(torch.rand(2, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match=r"shape \(n, 3, 32, 32\)"):
        probe.predict(torch.rand(2, 3, 64, 64))


def test_shipped_probe_recorded_r2(shipped):
    meta = shipped.meta
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["heldout_size"] == 2000
    for factor in KEY_FACTORS:
        assert meta["heldout_r2"][factor] >= 0.9, (factor, meta["heldout_r2"][factor])


def test_shipped_probe_reads_the_bundled_samples(shipped):
    images, factors = load_samples()
    predicted = shipped.predict(images)
    assert list(predicted.columns) == FACTORS and len(predicted) == len(factors)
    for factor in KEY_FACTORS:
        r = np.corrcoef(predicted[factor], factors[factor])[0, 1]
        assert r > 0.9, (factor, r)


def test_factor_change_names_the_edited_factor(shipped):
    _, factors = load_samples("heldout")
    factors = factors.drop(columns=["file", "subset"])
    original = render(factors)
    assert np.abs(factor_change(shipped, original, original).to_numpy()).max() == 0
    brighter = render(factors.assign(lighting=np.clip(factors["lighting"] + 0.8, -1, 1)))
    change = factor_change(shipped, original, brighter).abs().mean()
    assert change.idxmax() == "lighting"
    # Hue wraps around: 0.97 -> 0.03 is a small step forward, not a jump of almost a whole turn.
    before, after = render(factors.assign(background_hue=0.97)), render(factors.assign(background_hue=0.03))
    hue_step = factor_change(shipped, before, after)["background_hue"]
    assert hue_step.abs().max() < 0.5 and hue_step.median() > 0
