"""Region variation (our mining criterion) against planted structure, and the supervised references' construction."""

import pytest
import torch

from localedit.bundled.references import TWINS, regions_of, twin_direction
from localedit.core.regions import Region
from localedit.core.subspace import principal_angles
from localedit.core.variation import RegionVariation, h_cells
from localedit.evaluation.labels import closest_reference

SHAPE = (4, 8, 8)  # (C, h, w) bottleneck of a 32-px image
SIZE = 32


def box(top, left, bottom, right, name):
    mask = torch.zeros(SIZE, SIZE)
    mask[top:bottom, left:right] = 1
    return Region(name, mask)


EYES, MOUTH = box(8, 4, 16, 28, "eyes"), box(20, 8, 28, 24, "mouth")


def planted(n=200, seed=0, local_scale=1.0, global_scale=5.0, noise=0.05):
    """h = global factors (everywhere, stronger) + one local factor per region (only in its cells) + noise."""
    g = torch.Generator().manual_seed(seed)
    d = torch.Size(SHAPE).numel()
    glob = torch.linalg.qr(torch.randn(d, 3, generator=g)).Q  # spread over every cell
    local = {}
    for region in (EYES, MOUTH):
        u = torch.randn(d, generator=g) * h_cells(region.mask, SHAPE)
        local[region.name] = u / u.norm()
    scores = torch.randn(n, 3, generator=g) * global_scale
    h = scores @ glob.T + noise * torch.randn(n, d, generator=g)
    for u in local.values():
        h += local_scale * torch.randn(n, 1, generator=g) * u
    return h.view(n, *SHAPE), glob, local


def test_cells_are_the_h_positions_a_region_touches():
    cells = h_cells(EYES.mask, SHAPE).view(SHAPE)
    assert torch.equal(cells[0], cells[-1])  # every channel alike
    expected = torch.zeros(8, 8)
    expected[2:4, 1:7] = 1  # rows 8-15 -> cells 2-3, cols 4-27 -> cells 1-6
    assert torch.equal(cells[0], expected)


def test_the_planted_local_direction_wins_over_a_five_times_stronger_global_one():
    h, glob, local = planted()
    fit = RegionVariation(n_directions=3, complement_rank=3).fit(h, [EYES, MOUTH])
    for a, region in enumerate((EYES, MOUTH)):
        top = fit.directions_[a][:, 0]
        assert abs(float(top @ local[region.name])) > 0.98
        # The global factors have 25x the variance, yet the top direction carries almost none of them.
        assert (glob.T @ top).norm() < 0.1
        assert torch.all(fit.variances_[a][:-1] >= fit.variances_[a][1:])
    # Plain PCA inside the cells, with nothing removed, would pick a global direction instead.
    plain = RegionVariation(n_directions=1, complement_rank=0).fit(h, [EYES, MOUTH])
    assert abs(float(plain.directions_[0][:, 0] @ local["eyes"])) < 0.5


def test_the_joint_directions_span_the_planted_global_factors_and_equal_the_principal_axes():
    h, glob, _ = planted()
    fit = RegionVariation(n_directions=3, complement_rank=3).fit(h, [EYES, MOUTH])
    assert principal_angles(fit.joint_directions_, glob).max() < 2.0  # degrees
    H = h.flatten(1).double()
    _, sigma, Vh = torch.linalg.svd(H - H.mean(0), full_matrices=False)  # the exact PCA
    assert torch.allclose((Vh[:3].float() @ fit.joint_directions_).abs().diagonal(), torch.ones(3), atol=1e-4)
    torch.testing.assert_close(fit.joint_variances_, (sigma[:3] ** 2 / (len(H) - 1)).float())


def test_directions_are_orthonormal_with_fixed_signs_and_deterministic():
    h, _, _ = planted(seed=1)
    a = RegionVariation(n_directions=4, complement_rank=3).fit(h, [EYES, MOUTH])
    b = RegionVariation(n_directions=4, complement_rank=3).fit(h.clone(), [EYES, MOUTH])
    for V, W in zip(a.directions_, b.directions_):
        assert torch.allclose(V.T @ V, torch.eye(V.shape[1]), atol=1e-5)
        assert torch.allclose(V, W)
        peak = V.gather(0, V.abs().argmax(0, keepdim=True))
        assert torch.all(peak > 0)
    assert a.get_params() == {"n_directions": 4, "complement_rank": 3}


def test_bad_inputs_are_refused_in_one_line():
    h, _, _ = planted(n=6)
    with pytest.raises(ValueError, match="at least complement_rank \\+ 2"):
        RegionVariation(complement_rank=8).fit(h, [EYES, MOUTH])
    with pytest.raises(ValueError, match="covers every h cell"):
        RegionVariation(complement_rank=2).fit(h, [Region("all", torch.ones(SIZE, SIZE)), MOUTH])
    with pytest.raises(ValueError, match="must be \\(images, C, h, w\\)"):
        RegionVariation(complement_rank=2).fit(h.flatten(1), [EYES, MOUTH])


def test_twin_direction_recovers_a_planted_difference():
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(256, generator=g), dim=0)
    low = torch.randn(16, 256, generator=g) * 3  # twins differ by 2u plus small noise; images differ a lot
    high = low + 2 * u + 0.05 * torch.randn(16, 256, generator=g)
    v = twin_direction(high, low)
    assert float(v @ u) > 0.99 and abs(float(v.norm()) - 1) < 1e-5
    with pytest.raises(ValueError, match="do not differ"):
        twin_direction(low, low)
    with pytest.raises(ValueError, match="must pair up"):
        twin_direction(high[:3], low)


def test_every_reference_factor_has_a_region_and_closest_reference_picks_by_abs_cos():
    assert regions_of() == {"eyes": ["eye_openness", "iris_color"],
                            "mouth": ["mouth_curvature", "mouth_openness", "lip_redness"]}
    assert len({t.factor for t in TWINS}) == len(TWINS)
    refs = {"a": torch.tensor([1.0, 0, 0]), "b": torch.tensor([0, 1.0, 0])}
    found = closest_reference(torch.tensor([[0.1, -0.9, 0], [2.0, 0, 0.1]]), refs, ["a", "b"])
    assert [name for name, _ in found] == ["b", "a"]
    assert found[0][1] == pytest.approx(0.9 / (0.82 ** 0.5), rel=1e-5)
    assert closest_reference(torch.ones(1, 3), refs, ["other"]) == [("", pytest.approx(float("nan"), nan_ok=True))]
