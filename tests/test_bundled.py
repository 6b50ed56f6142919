"""End to end on the bundled model: it opens offline, inverts faithfully, and its eyes edit is local."""

import pytest
import torch

from localedit.ddim import reconstruct
from localedit.editing import edit
from localedit.metrics import locality
from localedit.mining import mine_image
from localedit.models import BUNDLED_MODEL_DIR, load_model
from localedit.regions import resolve_regions
from localedit.samples import load_samples


@pytest.fixture(scope="module")
def bundled():
    return load_model()


def test_bundled_model_opens_offline_with_card(bundled):
    assert bundled.source == str(BUNDLED_MODEL_DIR)
    assert bundled.resolution == 32 and len(bundled.fingerprint) == 16
    assert "Measured quality" in (BUNDLED_MODEL_DIR / "README.md").read_text()


def test_inversion_round_trip_on_samples(bundled):
    images, _ = load_samples("heldout")
    _, psnr = reconstruct(bundled, images[:4] * 2 - 1)
    assert psnr.mean() > 28


def test_eyes_individual_direction_edits_the_eyes(bundled):
    images, factors = load_samples("mine")
    image = images[int(factors["eye_openness"].idxmax())]
    regions = resolve_regions("eyes,mouth", bundled.resolution)
    found = mine_image(bundled, image, regions)
    assert all(s.basis.shape[1] == 8 for s in found.subspaces)
    direction = found.individual("eyes")[:, 0]
    out = edit(bundled, None, direction, [0.0, -0.2, 0.2], x_T=found.latent.x_T)[0]
    change = (out[1:] - out[:1]).pow(2).flatten(1).sum(1)
    stronger = int(change.argmax())
    share = locality(out[:1], out[1 + stronger:2 + stronger], regions[0].mask)
    assert float(share) > 0.5  # chance is the box's share of the image, 0.14
    assert regions[0].fraction < 0.2
    # The individual direction is orthogonal to the joint subspace by construction.
    if found.joint.shape[1]:
        assert (found.joint.T @ direction).abs().max() < 1e-4
