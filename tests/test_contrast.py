"""Region contrast (our locality-penalised criterion): matrix-free Lanczos against the explicitly formed operator."""

import pytest
import torch

from localedit.core.contrast import contrast_directions
from localedit.core.hspace import encode
from localedit.core.jacobian import exact_jacobian
from localedit.core.regions import Region
from localedit.core.subspace import principal_angles


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
    torch.testing.assert_close(values.double(), exact_values.flip(0)[:2], rtol=1e-3, atol=1e-6)
    assert float(principal_angles(vectors, exact_vectors[:, -2:].float()).max()) < 1.0
    # What the criterion promises: the top direction's change is mostly inside the region on these images.
    share = [float(((J @ vectors[:, 0].double()) ** 2 * (weight > 0)).sum() / (J @ vectors[:, 0].double()).pow(2).sum())
             for J in [exact_jacobian(tiny_model, encode(tiny_model.unet, x[None], 500), torch.ones(size, size)).double()
                       for x in x_t]]
    assert min(share) > mu / (1 + mu) - 0.25 and sum(share) / 2 > mu / (1 + mu)


def test_bad_settings_are_refused(tiny_model):
    x_t = torch.zeros(1, 3, tiny_model.resolution, tiny_model.resolution)
    region = Region("r", torch.ones(tiny_model.resolution, tiny_model.resolution))
    with pytest.raises(ValueError, match="mu >= 0"):
        contrast_directions(tiny_model, x_t, 500, [region], mu=-1)
