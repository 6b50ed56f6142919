"""Consensus across images: shared directions are found, scored, and the unshared ones dropped."""

import pytest
import torch

from localedit.core.aggregate import consensus

D = 200


def planted(n: int, shared: torch.Tensor, k: int = 4, shared_sv: float = 3.0, seed: int = 0):
    """n images whose k-dim subspaces all contain ``shared`` (with singular value shared_sv) plus random directions."""
    g = torch.Generator().manual_seed(seed)
    bases, svs = [], []
    for _ in range(n):
        basis = torch.linalg.qr(torch.cat([shared[:, None], torch.randn(D, k - 1, generator=g)], dim=1)).Q
        bases.append(basis)
        svs.append(torch.tensor([shared_sv] + [1.0] * (k - 1)))
    return bases, svs


def unit(seed: int) -> torch.Tensor:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_a_direction_every_image_contains_is_found_first_with_full_support():
    u = unit(1)
    bases, svs = planted(6, u)
    found = consensus(bases, svs, max_directions=4, threshold=0.5, min_support=2)
    assert abs(float(found.directions[:, 0] @ u)) > 0.999
    assert found.consistency[0] > 0.99 and int(found.support[0]) == 6 and found.n_images == 6
    # Random per-image directions are in no other image's subspace: they fail min_support.
    assert found.directions.shape[1] == 1


def test_directions_are_orthonormal_sorted_and_sign_fixed():
    bases, svs = planted(5, unit(2), k=5)
    found = consensus(bases, svs, max_directions=10, threshold=0.2, min_support=1)
    m = found.directions.shape[1]
    assert m > 1
    torch.testing.assert_close(found.directions.T @ found.directions, torch.eye(m), atol=1e-5, rtol=0)
    assert torch.all(found.singular_values[:-1] >= found.singular_values[1:])
    peaks = found.directions.gather(0, found.directions.abs().argmax(0, keepdim=True))
    assert torch.all(peaks > 0)
    flipped = consensus([-b for b in bases], svs, max_directions=10, threshold=0.2, min_support=1)
    torch.testing.assert_close(flipped.directions, found.directions, atol=1e-5, rtol=0)


def test_singular_values_decide_which_shared_direction_is_strongest():
    u, w = unit(3), unit(4)
    w = w - (w @ u) * u
    w = w / w.norm()
    g = torch.Generator().manual_seed(5)
    bases, svs = [], []
    for _ in range(4):
        bases.append(torch.linalg.qr(torch.stack([u, w, torch.randn(D, generator=g)], dim=1)).Q)
        svs.append(torch.tensor([1.0, 5.0, 0.5]))  # energy mostly along the (orthogonalised) second column
    found = consensus(bases, svs, max_directions=2, min_support=2)
    second = bases[0][:, 1]
    assert abs(float(found.directions[:, 0] @ second)) > 0.99
    assert found.singular_values[0] > found.singular_values[1]


def test_support_counts_images_and_consistency_averages_over_all_of_them():
    u = unit(6)
    bases, svs = planted(3, u, seed=1)
    others, other_svs = planted(2, unit(7), seed=2)  # two images without u
    found = consensus(bases + others, svs + other_svs, max_directions=1, threshold=0.5, min_support=1)
    assert abs(float(found.directions[:, 0] @ u)) > 0.99
    assert int(found.support[0]) == 3
    assert float(found.consistency[0]) == pytest.approx(3 / 5, abs=0.02)


def test_images_without_directions_count_but_contribute_nothing():
    u = unit(8)
    bases, svs = planted(2, u)
    found = consensus(bases + [torch.zeros(D, 0)], svs + [torch.zeros(0)], max_directions=1)
    assert found.n_images == 3 and int(found.support[0]) == 2
    empty = consensus([torch.zeros(D, 0)] * 2, [torch.zeros(0)] * 2, max_directions=3)
    assert empty.directions.shape == (D, 0) and empty.support.numel() == 0


def test_bad_input_is_refused():
    bases, svs = planted(2, unit(9))
    with pytest.raises(ValueError, match="one singular-value vector per basis"):
        consensus(bases, svs[:1], max_directions=2)
    with pytest.raises(ValueError, match="threshold"):
        consensus(bases, svs, max_directions=2, threshold=1.5)
    with pytest.raises(ValueError, match="min_support"):
        consensus(bases, svs, max_directions=2, min_support=0)
    with pytest.raises(ValueError, match="do not match"):
        consensus([bases[0], bases[1][:50]], svs, max_directions=2)
