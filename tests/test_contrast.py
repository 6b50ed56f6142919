"""Region contrast (our locality-penalised criterion): the matrix-free block Krylov engine against the explicitly
formed operator."""

import pytest
import torch

from localedit.core import contrast
from localedit.core.contrast import contrast_directions
from localedit.core.hspace import encode
from localedit.core.jacobian import exact_jacobian
from localedit.core.regions import Region
from localedit.core.subspace import fix_signs, principal_angles


def test_contrast_directions_match_the_exact_eigenvectors_of_the_summed_penalised_operator(tiny_model):
    size = tiny_model.resolution
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(2, 3, size, size, generator=g)
    mask = torch.zeros(size, size)
    mask[2:7, 2:14] = 1
    region, mu = Region("eyes", mask), 3.0
    [(vectors, values)] = contrast_directions(tiny_model, x_t, 500, [region], k=2, mu=mu, tol=1e-6)
    weight = (mask - mu * (1 - mask)).expand(3, size, size).reshape(-1).double()
    C = 0
    for x in x_t:
        J = exact_jacobian(tiny_model, encode(tiny_model.unet, x[None], 500), torch.ones(size, size)).double()
        C = C + J.T @ (weight[:, None] * J)
    exact_values, exact_vectors = torch.linalg.eigh(C)
    torch.testing.assert_close(values.double(), exact_values.flip(0)[:2], rtol=1e-5, atol=1e-6)
    assert float(principal_angles(vectors, exact_vectors[:, -2:].float()).max()) < 0.01
    # Each eigenvector on its own, not only the span (signs fixed the same way).
    assert torch.all((vectors.double() * fix_signs(exact_vectors[:, -2:].flip(1))).sum(0) > 0.9999)
    # What the criterion promises: the top direction's change is mostly inside the region on these images.
    share = [float(((J @ vectors[:, 0].double()) ** 2 * (weight > 0)).sum() / (J @ vectors[:, 0].double()).pow(2).sum())
             for J in [exact_jacobian(tiny_model, encode(tiny_model.unet, x[None], 500), torch.ones(size, size)).double()
                       for x in x_t]]
    assert min(share) > mu / (1 + mu) - 0.25 and sum(share) / 2 > mu / (1 + mu)


def _regions(size):
    eyes, mouth = torch.zeros(size, size), torch.zeros(size, size)
    eyes[2:7, 2:14], mouth[10:15, 4:12] = 1, 1
    return [Region("eyes", eyes), Region("mouth", mouth)]


def test_two_regions_at_once_give_what_each_gives_alone(tiny_model):
    """The catalogue computes every region in one call; a region that converges first leaves the batch, the
    other iterates on, and each gets the directions it gets alone (same start, same stopping rule)."""
    x_t = torch.randn(2, 3, tiny_model.resolution, tiny_model.resolution, generator=torch.Generator().manual_seed(5))
    regions = _regions(tiny_model.resolution)
    together = contrast_directions(tiny_model, x_t, 500, regions, k=2)
    for region, (vectors, values) in zip(regions, together):
        [(alone_vectors, alone_values)] = contrast_directions(tiny_model, x_t, 500, [region], k=2)
        assert vectors.shape == alone_vectors.shape and vectors.shape[1] == 2
        torch.testing.assert_close(vectors, alone_vectors, rtol=0, atol=1e-5)
        torch.testing.assert_close(values, alone_values, rtol=1e-5, atol=1e-8)
    assert float(principal_angles(together[0][0], together[1][0]).min()) > 10  # and the regions differ


def test_only_converged_pairs_are_kept_at_the_iteration_cap(tiny_model, monkeypatch):
    x_t = torch.randn(1, 3, tiny_model.resolution, tiny_model.resolution, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(contrast, "CONTRAST_MAX_ITER", 2)
    found = contrast_directions(tiny_model, x_t, 500, _regions(tiny_model.resolution), k=2, tol=1e-6)
    for vectors, values in found:
        assert vectors.shape[1] == values.shape[0] < 2


def test_bad_settings_are_refused(tiny_model):
    x_t = torch.zeros(1, 3, tiny_model.resolution, tiny_model.resolution)
    region = Region("r", torch.ones(tiny_model.resolution, tiny_model.resolution))
    with pytest.raises(ValueError, match="mu >= 0"):
        contrast_directions(tiny_model, x_t, 500, [region], mu=-1)
