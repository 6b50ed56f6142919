"""JIVE on planted region subspaces: recovery, ranks, orthogonality, the singular-value pitfall, errors."""

import inspect
import math
import warnings

import numpy as np
import pytest
import torch

from localedit.core.jive import JIVE, _random_direction_bound, signal_mask
from localedit.core.subspace import principal_angles

D, RJ, RI = 256, 2, 3
F64 = torch.float64


def _orthonormal(d, k, g):
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))[0]


def planted(K, noise=1e-3, seed=0, individual_ranks=None, k=None):
    """K regions sharing a 2-dim joint subspace, each with its own individual subspace (dims
    individual_ranks, default 3 each).

    Each region's "Jacobian" M_a = diag(s) R^T [joint, individual_a]^T + noise, with R a random
    orthogonal mixing and s in [1, 3], is handed over the way the product does: as its SVD
    (V_a, s_a), truncated to the top k (default: all 2 + r_a).  With k > 2 + r_a, M_a gets zero
    rows up to k before the noise (entries N(0, noise^2)) is added, so the k - 2 - r_a trailing
    directions are pure noise, with singular values about noise * sqrt(D).
    """
    ranks = [RI] * K if individual_ranks is None else list(individual_ranks)
    g = torch.Generator().manual_seed(seed)
    Q = _orthonormal(D, RJ + sum(ranks), g)
    ends = np.cumsum([RJ, *ranks]).tolist()
    joint, individual = Q[:, :RJ], [Q[:, a:b] for a, b in zip(ends[:-1], ends[1:])]
    bases, svals = [], []
    for ind in individual:
        r = RJ + ind.shape[1]
        mixing = _orthonormal(r, r, g)
        s = 1 + 2 * torch.rand(r, generator=g, dtype=F64)
        M = (s[:, None] * mixing.T) @ torch.cat([joint, ind], dim=1).T
        M = torch.cat([M, torch.zeros(max(k or r, r) - r, D, dtype=F64)])
        M = M + noise * torch.randn(M.shape, generator=g, dtype=F64)
        _, sv, vh = torch.linalg.svd(M, full_matrices=False)
        bases.append(vh[:k].T)
        svals.append(sv[:k])
    return bases, svals, joint, individual


def max_angle(A, B):
    return principal_angles(A, B).max().item()


def fitted_models(K):
    bases, svals, joint, individual = planted(K)
    auto = JIVE().fit(bases, svals)
    fixed = JIVE(joint_rank=RJ, individual_ranks=RI).fit(bases, svals)
    return auto, fixed, joint, individual


# ---------------------------------------------------------------- planted recovery

@pytest.mark.parametrize("K", [2, 3])
def test_automatic_ranks_recover_planted_structure(K):
    auto, _, joint, individual = fitted_models(K)
    assert auto.ranks_ == {"joint": RJ, "individual": [RI] * K}
    assert auto.joint_threshold_ == pytest.approx(K * math.cos(math.radians(30)) ** 2)
    assert max_angle(auto.joint_basis_, joint) < 2
    for got, want in zip(auto.individual_bases_, individual):
        assert got.shape == (D, RI)
        assert max_angle(got, want) < 2
    # stacked components: 2 joint ones near 0 degrees, 3K individual ones at the single-region
    # angle arccos(1/sqrt(K)), and (K-1)*2 redundant copies of the joint directions at 90 degrees
    angles = auto.principal_angles_deg_
    assert angles.shape == (K * (RJ + RI),)
    assert (angles[:RJ] < 2).all()
    single = angles[RJ:RJ + RI * K]
    torch.testing.assert_close(single, torch.full_like(single, math.degrees(math.acos(K ** -0.5))),
                               rtol=0, atol=2.0)
    assert (angles[RJ + RI * K:] > 85).all()


@pytest.mark.parametrize("K", [2, 3])
def test_fixed_ranks_iterative_jive_recovers_planted_structure(K):
    _, fixed, joint, individual = fitted_models(K)
    assert fixed.ranks_ == {"joint": RJ, "individual": [RI] * K}
    assert fixed.joint_threshold_ is None
    assert 1 <= fixed.n_iter_ < fixed.max_iter  # converged
    assert max_angle(fixed.joint_basis_, joint) < 2
    for got, want in zip(fixed.individual_bases_, individual):
        assert max_angle(got, want) < 2


@pytest.mark.parametrize("K", [2, 3])
def test_outputs_orthonormal_individual_orthogonal_to_joint_and_sorted(K):
    auto, fixed, _, _ = fitted_models(K)
    for model in (auto, fixed):
        J = model.joint_basis_
        torch.testing.assert_close(J.T @ J, torch.eye(RJ, dtype=F64), rtol=0, atol=1e-5)
        assert (model.joint_singular_values_.diff() <= 0).all()
        for B, sv in zip(model.individual_bases_, model.individual_singular_values_):
            torch.testing.assert_close(B.T @ B, torch.eye(B.shape[1], dtype=F64), rtol=0, atol=1e-5)
            assert (J.T @ B).abs().max() < 1e-5
            assert (sv.diff() <= 0).all() and (sv > 0).all()


def test_float32_numpy_input_gives_float32_tensors():
    bases, svals, joint, _ = planted(2)
    model = JIVE().fit([b.numpy().astype(np.float32) for b in bases],
                       [s.numpy().astype(np.float32) for s in svals])
    assert model.joint_basis_.dtype == torch.float32
    assert all(b.dtype == torch.float32 for b in model.individual_bases_)
    assert model.joint_singular_values_.dtype == torch.float32
    assert max_angle(model.joint_basis_, joint) < 2
    for B in model.individual_bases_:
        assert (model.joint_basis_.T @ B).abs().max() < 1e-5


def test_partially_fixed_ranks():
    bases, svals, joint, individual = planted(3)
    fixed_joint = JIVE(joint_rank=1).fit(bases, svals)
    assert fixed_joint.ranks_ == {"joint": 1, "individual": [RI + 1] * 3}  # the dropped joint direction is now individual
    assert fixed_joint.joint_threshold_ is None
    fixed_individual = JIVE(individual_ranks=[1, 2, 3]).fit(bases, svals)
    assert fixed_individual.ranks_ == {"joint": RJ, "individual": [1, 2, 3]}
    for B, want in zip(fixed_individual.individual_bases_, individual):
        assert max_angle(B, want) < 2  # nested in the planted individual subspace


# ---------------------------------------------------------------- signal ranks (AJIVE's initial signal extraction)

NOISY_RANKS, TOP_K = [1, 3, 2], 6


def test_automatic_ranks_leave_out_the_noise_directions_of_a_wider_top_k():
    # Top-6 subspaces of regions of true rank 3, 5 and 4 (joint 2 + individual 1, 3, 2): the
    # trailing 3, 1 and 2 directions are noise at ~2% of the signal.  Those are far from every
    # other region, so without a signal rank they passed the angle test as individual (4, 4, 4).
    bases, svals, joint, individual = planted(3, noise=2.5e-3, individual_ranks=NOISY_RANKS, k=TOP_K)
    for s, r in zip(svals, NOISY_RANKS):
        relative = s / s.max()
        assert relative[RJ + r - 1] > 0.3 and 0.01 < relative[RJ + r:].max() < 0.03  # the scenario
    auto = JIVE().fit(bases, svals)
    assert auto.ranks_ == {"joint": RJ, "individual": NOISY_RANKS}
    assert auto.signal_ranks_ == [RJ + r for r in NOISY_RANKS]
    assert max_angle(auto.joint_basis_, joint) < 1
    for got, want in zip(auto.individual_bases_, individual):
        assert got.shape == want.shape and max_angle(got, want) < 2
    unguarded = JIVE(signal_gap=math.inf).fit(bases, svals)
    assert unguarded.signal_ranks_ == [TOP_K] * 3
    assert unguarded.ranks_ == {"joint": RJ, "individual": [TOP_K - RJ] * 3}


def test_signal_mask_cuts_at_the_first_order_of_magnitude_drop():
    def mask(values, gap=10.0):
        return signal_mask(torch.tensor(values, dtype=F64), gap).tolist()

    assert mask([0.02, 1.0, 0.5, 0.019, 0.6]) == [False, True, True, False, True]  # any order
    # the first drop, not the largest: junk below the noise floor does not move the cut
    assert mask([1.0, 0.9, 0.02, 0.019, 4e-4]) == [True, True, False, False, False]
    # smooth spectra stay whole: the bundled model's masked Jacobians drop by < 2x per step,
    # a dominant direction 5x the rest is still signal
    assert all(mask([0.064, 0.047, 0.046, 0.044, 0.04, 0.036, 0.035, 0.034]))
    assert all(mask([5.0, 1.0, 1.0, 0.8, 0.6]))
    assert mask([1.0, 0.5, 1e-8], gap=math.inf) == [True, True, False]  # zeros never are signal
    assert mask([1.0, 0.05], gap=10) == [True, False] and all(mask([1.0, 0.05], gap=30))


# ---------------------------------------------------------------- no joint / angle rule

@pytest.mark.parametrize("K", [2, 3])
def test_independent_subspaces_have_no_joint_part(K):
    g = torch.Generator().manual_seed(3)
    bases = [_orthonormal(D, 5, g) for _ in range(K)]
    svals = [torch.linspace(3, 1, 5, dtype=F64) for _ in range(K)]
    model = JIVE().fit(bases, svals)
    assert model.ranks_ == {"joint": 0, "individual": [5] * K}
    assert model.joint_basis_.shape == (D, 0) and model.joint_singular_values_.shape == (0,)
    for B, V, sv in zip(model.individual_bases_, bases, model.individual_singular_values_):
        assert max_angle(B, V) < 1e-6  # the whole region is individual
        torch.testing.assert_close(sv, svals[0] / svals[0].norm())  # energy in normalised units


def test_random_bound_guards_a_loose_angle():
    # at 60 degrees K cos^2 = 0.5 would call every single-region direction joint; chance
    # alignment of random subspaces must then set the threshold
    g = torch.Generator().manual_seed(4)
    bases = [_orthonormal(D, 5, g) for _ in range(2)]
    model = JIVE(max_angle_deg=60).fit(bases, [torch.ones(5, dtype=F64)] * 2)
    assert model.ranks_["joint"] == 0
    assert 1.0 < model.joint_threshold_ < 2.0


def test_max_angle_decides_whether_a_tilted_direction_is_joint():
    # region 1 contains e0, region 2 the same direction tilted by 40 degrees: their bisector is
    # 20 degrees from both regions, so its squared stacked singular value is 2 cos^2(20 deg).
    E = torch.eye(D, dtype=F64)
    tilt = math.radians(40)
    b1 = E[:, [0, 2]]
    b2 = torch.stack([math.cos(tilt) * E[:, 0] + math.sin(tilt) * E[:, 1], E[:, 3]], dim=1)
    svals = [torch.tensor([2.0, 1.0], dtype=F64)] * 2

    loose = JIVE(max_angle_deg=30).fit([b1, b2], svals)
    assert loose.principal_angles_deg_[0].item() == pytest.approx(20.0)
    assert loose.ranks_ == {"joint": 1, "individual": [1, 1]}  # e0 and its tilt lie within 30 deg of the joint axis
    bisector = (E[:, 0] + b2[:, 0]) / (E[:, 0] + b2[:, 0]).norm()
    assert max_angle(loose.joint_basis_, bisector[:, None]) < 1e-6
    assert max_angle(loose.individual_bases_[0], E[:, [2]]) < 1e-6

    strict = JIVE(max_angle_deg=15).fit([b1, b2], svals)
    assert strict.ranks_ == {"joint": 0, "individual": [2, 2]}


def test_random_direction_bound_matches_brute_force():
    d, dims, n = 30, (3, 4), 3000
    rng = np.random.default_rng(0)
    bound = [_random_direction_bound(d, dims, n, q, np.random.default_rng(5)) for q in (0.5, 0.95)]
    stacked = np.concatenate([np.linalg.qr(rng.standard_normal((n, d, k)))[0] for k in dims], axis=2)
    brute = np.quantile(np.linalg.svd(stacked, compute_uv=False)[:, 0] ** 2, [0.5, 0.95])
    np.testing.assert_allclose(bound, brute, atol=0.02)
    # a 3- and a 4-dim subspace of R^5 always share 2 dimensions
    assert _random_direction_bound(5, dims, 50, 0.5, rng) == pytest.approx(2.0)


# ---------------------------------------------------------------- the singular-value pitfall

def dominated_regions():
    """Two regions, each dominated (s = 5) by a planted individual direction, sharing 2 joint ones."""
    g = torch.Generator().manual_seed(7)
    Q = _orthonormal(D, RJ + 2 * RI, g)
    joint = Q[:, :RJ]
    bases, dominant = [], []
    for a in range(2):
        ind = Q[:, RJ + RI * a: RJ + RI * (a + 1)]
        bases.append(torch.cat([ind[:, :1], joint, ind[:, 1:]], dim=1))
        dominant.append(ind[:, :1])
    s = torch.tensor([5.0, 1.0, 1.0, 0.8, 0.6], dtype=F64)
    return bases, [s, s], dominant


def test_singular_values_make_the_top_individual_direction_the_dominant_one():
    bases, svals, dominant = dominated_regions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = JIVE().fit(bases, svals)
    assert model.ranks_ == {"joint": RJ, "individual": [RI, RI]}
    for B, sv, dom in zip(model.individual_bases_, model.individual_singular_values_, dominant):
        assert max_angle(B[:, :1], dom) < 2
        torch.testing.assert_close(sv, torch.tensor([5.0, 0.8, 0.6], dtype=F64) / svals[0].norm())


def test_bare_bases_warn_and_leave_individual_order_arbitrary():
    bases, _, _ = dominated_regions()
    with pytest.warns(UserWarning, match="singular_values not given"):
        model = JIVE().fit(bases)
    assert model.ranks_ == {"joint": RJ, "individual": [RI, RI]}
    for sv in model.individual_singular_values_:
        torch.testing.assert_close(sv, torch.full((RI,), 5 ** -0.5, dtype=F64))  # all equal: no "top" edit


# ---------------------------------------------------------------- errors

def test_errors():
    bases, svals, _, _ = planted(3)
    with pytest.raises(ValueError, match="empty"):
        JIVE().fit([])
    with pytest.raises(ValueError, match="at least two"):
        JIVE().fit(bases[:1], svals[:1])
    with pytest.raises(ValueError, match=r"bases\[1\] has d=255"):
        JIVE().fit([bases[0], bases[1][:-1]], svals[:2])
    with pytest.raises(ValueError, match=r"bases\[2\] does not have orthonormal columns"):
        JIVE().fit(bases[:2] + [2 * bases[2]], svals)
    with pytest.raises(ValueError, match="2 singular-value vectors for 3 bases"):
        JIVE().fit(bases, svals[:2])
    with pytest.raises(ValueError, match=r"singular_values\[1\] has shape \(4,\); expected \(5,\)"):
        JIVE().fit(bases, [svals[0], svals[1][:4], svals[2]])
    with pytest.raises(ValueError, match=r"singular_values\[0\] contains negative"):
        JIVE().fit(bases, [-svals[0], svals[1], svals[2]])
    with pytest.raises(ValueError, match=r"individual_ranks\[0\]=6 exceeds k_0=5"):
        JIVE(individual_ranks=6).fit(bases, svals)
    with pytest.raises(ValueError, match=r"joint_rank=6 must be in \[0, min k_a = 5\]"):
        JIVE(joint_rank=6).fit(bases, svals)
    with pytest.raises(ValueError, match=r"joint_rank \+ individual_ranks\[1\] = 6 exceeds k_1=5"):
        JIVE(joint_rank=2, individual_ranks=[3, 4, 3]).fit(bases, svals)
    with pytest.raises(ValueError, match="individual_ranks has 2 entries for 3 regions"):
        JIVE(individual_ranks=[1, 1]).fit(bases, svals)
    with pytest.raises(ValueError, match="max_angle_deg"):
        JIVE(max_angle_deg=90).fit(bases, svals)
    with pytest.raises(ValueError, match="signal_gap must be > 1"):
        JIVE(signal_gap=1.0).fit(bases, svals)


# ---------------------------------------------------------------- scikit-learn contract

def test_init_stores_params_unchanged_and_refit_replaces_state():
    ranks = [3, 3, 3]
    params = dict(joint_rank=2, individual_ranks=ranks, max_angle_deg=25.0, signal_gap=5.0, n_random=10,
                  quantile=0.9, max_iter=7, tol=1e-6, random_state=None)
    assert set(params) == set(inspect.signature(JIVE).parameters)
    model = JIVE(**params)
    for name, value in params.items():
        assert getattr(model, name) is value
    assert not [k for k in vars(model) if k.endswith("_")]  # nothing learned before fit

    bases3, svals3, _, _ = planted(3)
    assert model.fit(bases3, svals3) is model
    assert len(model.individual_bases_) == 3 and model.individual_ranks is ranks

    bases2, svals2, joint2, _ = planted(2, seed=11)
    auto = JIVE(n_random=50)
    first = auto.fit(bases3, svals3).joint_threshold_
    auto.fit(bases2, svals2)
    assert len(auto.individual_bases_) == 2 and auto.ranks_["joint"] == RJ
    assert max_angle(auto.joint_basis_, joint2) < 2
    assert auto.fit(bases3, svals3).joint_threshold_ == first  # seeded: refits are reproducible
