"""End to end on the bundled model: it opens offline, inverts faithfully, and its eyes edit is local."""

import json

import pytest
import torch

from localedit.bundled.samples import load_samples
from localedit.bundled.synthetic import sample_faces
from localedit.core.ddim import reconstruct
from localedit.core.mining import mine_image
from localedit.core.models import BUNDLED_MODEL_DIR, load_model
from localedit.core.regions import resolve_regions
from localedit.evaluation.model_card import edit_locality, x0_error_by_timestep


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
    """The model card's figure, recomputed: mean share of the eyes edit inside the eyes box."""
    shares = edit_locality(bundled, sample_faces(4, seed=40_000).images)
    card = json.loads((BUNDLED_MODEL_DIR / "training.json").read_text())["quality"]["edit_locality"]
    for name in ("eyes_individual", "joint", "mouth_individual"):
        assert shares[name] == pytest.approx(card[name], abs=0.03), name
    # Chance is the box's share of the image: 0.14 for the eyes.
    assert shares["eyes_individual"] > 3 * 0.137 and shares["eyes_individual"] > shares["joint"]


@pytest.mark.xfail(strict=True, reason="velocity model: eyes 0.44 vs joint 0.29 in the eyes box at alpha 0.2 "
                   "(the epsilon model met it, 0.44 vs 0.15); reported in the model card")
def test_joint_direction_is_global_next_to_the_eyes_direction(bundled):
    shares = edit_locality(bundled, sample_faces(4, seed=40_000).images)
    assert shares["eyes_individual"] > 2 * shares["joint"]


def test_individual_directions_are_orthogonal_to_joint(bundled):
    images, _ = load_samples("mine")
    regions = resolve_regions("eyes,mouth", bundled.resolution)
    for complements in (False, True):  # the paper's JIVE and ours (regions' complements as extra blocks)
        found = mine_image(bundled, images[0], regions, jive={"joint_rank": 1, "individual_ranks": 4},
                           complements=complements)
        assert all(s.basis.shape[1] == 8 for s in found.subspaces)
        assert found.joint.shape[1] == 1 and found.individual("eyes").shape[1] <= 4
        for region in ("eyes", "mouth"):
            basis = found.individual(region)
            assert (found.joint.T @ basis).abs().max() < 1e-4
            torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=0)


def test_clean_image_estimate_beats_guessing_the_mean_at_every_timestep(bundled):
    """The defect that left the epsilon-parameterised model grainy: its x0 estimate at t >= 700 was
    worse than the mean image (x0 RMSE 0.49 at t = 700, 4.8 at t = 980; data std 0.37)."""
    errors, data_std = x0_error_by_timestep(bundled)
    card = json.loads((BUNDLED_MODEL_DIR / "training.json").read_text())["quality"]["x0_rmse_by_t"]
    assert errors == pytest.approx(card, abs=0.01)
    assert max(errors.values()) < data_std
    assert list(errors.values()) == sorted(errors.values())  # harder as the noise grows


def test_shipped_references_are_read_not_recomputed_and_match_fresh_twins(bundled, tmp_path, monkeypatch):
    """The bundled model carries the default run's references (no ~2 CPU minutes on a fresh clone); they are what
    the twins give: the eye-openness twins, drawn again, give the shipped direction."""
    from localedit.bundled import references
    from localedit.core.mining import DEFAULT_T

    def no_twins(*args, **kwargs):
        raise AssertionError("the shipped references were recomputed")

    monkeypatch.setattr(references, "_twin_h", no_twins)
    shipped = references.reference_directions(bundled, DEFAULT_T, cache=tmp_path)
    assert set(shipped) == {twin.factor for twin in references.TWINS} and not list(tmp_path.iterdir())
    monkeypatch.undo()
    high, low = references._twin_h(bundled, references.TWINS[0], DEFAULT_T, 50, references.TWIN_PAIRS,
                                   references.TWIN_SEED)
    torch.testing.assert_close(references.twin_direction(high, low), shipped["eye_openness"], atol=1e-4, rtol=0)
