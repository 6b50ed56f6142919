"""Split per-region h-space subspaces into joint (global) and individual (local) edit directions.

For each image region a, the masked Jacobian J_a = d(mask_a * eps)/dh has top-k right singular
vectors V_a and singular values s_a.  JIVE (Lock et al. 2013) finds a row space shared by every
region (joint: directions that move all regions, i.e. global edits) and, per region, a row space
orthogonal to it (individual: directions that move mostly that region, i.e. local edits), as in
Kouzelis et al., "Enabling Local Editing in Diffusion Models by Joint and Individual Component
Analysis" (BMVC 2024).  Ranks are either given (iterative JIVE) or chosen from the angles between
the regions' signal subspaces (AJIVE: Feng, Jiang, Hannig and Marron, "Angle-based joint and
individual variation explained", J. Multivariate Anal. 2018), each region's signal rank read off
its singular-value spectrum as AJIVE's initial signal extraction does.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Sequence
from functools import reduce

import numpy as np
import torch

from localedit.core.subspace import as_float_tensor, orthonormal_columns, project_out

__all__ = ["JIVE"]

# float32 right singular vectors are orthonormal to ~1e-6; anything far above that is a wrong input.
_ORTHONORMAL_ATOL = 1e-4
# Directions whose singular value is below this fraction of the region's largest do not move the
# region at all, so they are left out of its signal subspace whatever the spectrum's gaps.
_SIGNAL_RTOL = 1e-6


def _random_direction_bound(d: int, dims: Sequence[int], n_random: int, quantile: float,
                            rng: np.random.Generator) -> float:
    """`quantile` of the largest squared singular value of stacked random orthonormal bases.

    This is AJIVE's random-direction bound: a joint component must be more aligned across the
    regions than anything that chance alignment of subspaces of these sizes produces.  Only the
    Gram matrix of the Gaussian draws matters, and Bartlett's decomposition gives their
    coordinates in a Gram-Schmidt frame (normal below the diagonal, chi(d - i) on it) without
    drawing d-dimensional vectors, so the cost does not grow with the h-space size d.
    """
    n = sum(dims)
    m = min(n, d)
    coords = np.zeros((n_random, n, m))
    rows, cols = np.tril_indices(n, -1, m)
    coords[:, rows, cols] = rng.standard_normal((n_random, rows.size))
    diag = np.arange(m)
    coords[:, diag, diag] = np.sqrt(rng.chisquare(d - diag, size=(n_random, m)))
    blocks = np.split(coords, np.cumsum(dims)[:-1], axis=1)
    stacked = np.concatenate([np.linalg.qr(b.transpose(0, 2, 1))[0] for b in blocks], axis=2)
    largest = np.linalg.svd(stacked, compute_uv=False)[:, 0] ** 2
    return float(np.quantile(largest, quantile))


def signal_mask(s: torch.Tensor, gap: float) -> torch.Tensor:
    """Which of a region's k directions (singular values s, shape (k,), any order) carry signal: (k,) bool.

    AJIVE (Feng et al. 2018) starts from a low-rank signal approximation of each block, its rank
    read off the scree plot where the spectrum drops to the noise level.  Automated here: sorted
    descending, the signal ends at the first drop between consecutive singular values by a factor
    of at least ``gap`` (none: all of them are signal); values below _SIGNAL_RTOL of the largest
    never are.  Without this cut, the noise directions of a top-k subspace (k above the true rank)
    are far from every other region's subspace and so pass the angle test as individual
    directions.  A first drop, not the largest, so a noise floor that itself falls off (numerical
    junk below the noise) does not pull the cut below the noise.
    """
    keep = s > _SIGNAL_RTOL * s.max()
    ranked = s[keep].sort(descending=True).values
    drops = torch.nonzero(ranked[:-1] >= gap * ranked[1:])
    if drops.numel():
        keep &= s >= ranked[drops[0, 0]]
    return keep


def _orthogonalise(basis: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
    """Remove the joint span from `basis` and re-orthonormalise, each column keeping its orientation."""
    return orthonormal_columns(project_out(basis, joint))


def scaled_rows(V: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """A region's scaled row space diag(s) V^T, divided by ||s|| so every region weighs equally."""
    return (s[:, None] * V.T) / torch.linalg.vector_norm(s)


def directions_outside(X_a: torch.Tensor, P_a: torch.Tensor, shared: torch.Tensor, max_angle_deg: float):
    """Directions of span(P_a) farther than max_angle_deg from span(shared), ordered by the region's
    energy (rows X_a along them); orthonormal and orthogonal to ``shared``. Returns (basis, energies)."""
    B, sines, _ = torch.linalg.svd(project_out(P_a, shared), full_matrices=False)
    candidates = B[:, sines > math.sin(math.radians(max_angle_deg))]
    _, sv, Wh = torch.linalg.svd(X_a @ candidates, full_matrices=False)
    return _orthogonalise(candidates @ Wh.T, shared), sv


def _top_residual(X_a: torch.Tensor, joint: torch.Tensor, rank: int):
    """Top-`rank` right singular vectors of X_a (I - P_J): the block's strongest non-joint directions."""
    resid = project_out(X_a.T, joint).T  # rows of X_a outside the joint span
    _, sv, vh = torch.linalg.svd(resid, full_matrices=False)
    return _orthogonalise(vh[:rank].T, joint), sv[:rank]


def _iterative_jive(X: list[torch.Tensor], joint_rank: int, individual_ranks: list[int],
                    max_iter: int, tol: float):
    """Lock et al.'s alternation on the scaled blocks X_a (k_a, d), with fixed ranks.

    Joint step: rank-r_C SVD of the stacked X_a - A_a, whose right factor V_J is shared.
    Individual step: rank-r_a SVD of (X_a - J_a)(I - V_J V_J^T).  Stops when the fitted
    J + A changes by less than `tol` relative to ||X||_F.
    """
    sizes = [x.shape[0] for x in X]
    Xs = torch.cat(X)
    scale = torch.linalg.matrix_norm(Xs)
    A = torch.zeros_like(Xs)
    fitted = torch.zeros_like(Xs)
    for n_iter in range(1, max_iter + 1):
        U, S, Vh = torch.linalg.svd(Xs - A, full_matrices=False)
        joint = Vh[:joint_rank].T
        J = (U[:, :joint_rank] * S[:joint_rank]) @ Vh[:joint_rank]
        individual, individual_sv, parts = [], [], []
        for resid, r in zip((Xs - J).split(sizes), individual_ranks):
            resid = project_out(resid.T, joint).T
            u, sv, vh = torch.linalg.svd(resid, full_matrices=False)
            parts.append((u[:, :r] * sv[:r]) @ vh[:r])
            individual.append(vh[:r].T)
            individual_sv.append(sv[:r])
        A = torch.cat(parts)
        change = torch.linalg.matrix_norm(J + A - fitted) / scale
        fitted = J + A
        if change < tol:
            break
    individual = [_orthogonalise(b, joint) for b in individual]
    return joint, S[:joint_rank], individual, individual_sv, n_iter


class JIVE:
    """Joint and individual subspaces of per-region Jacobian row spaces (scikit-learn style).

    Parameters
    ----------
    joint_rank, individual_ranks
        The paper's r_C and r_a (an int applies to every region).  Both given: iterative JIVE
        (Lock et al.).  Otherwise a single AJIVE pass, choosing automatically whichever is None.
    max_angle_deg
        Automatic joint rank: a joint direction must lie within this angle of every region
        (root-mean-square over regions).  Automatic individual rank: a region's directions within
        this angle of the joint subspace count as joint, not individual.
    signal_gap
        Automatic ranks only: a region's signal subspace ends at the first drop of its sorted
        singular values by at least this factor (AJIVE's initial signal rank; see signal_mask).
        The directions past it are noise, counted neither as joint nor as individual.  The
        default, an order of magnitude, leaves smooth spectra whole (on the bundled model, the
        top-8 masked Jacobian spectra of 24 mining images drop by under 2x between neighbours,
        so nothing is cut there) and cuts a noise floor at a few percent of the signal;
        math.inf turns the cut off.
    n_random, quantile, random_state
        AJIVE random-direction bound: `quantile` of the largest squared singular value over
        `n_random` draws of random subspaces of the regions' dimensions (seeded by random_state).
    max_iter, tol
        Iterative JIVE stopping rule (relative change of the fitted joint + individual part).

    Model.  Region a is represented by its scaled row space M_a = diag(s_a) V_a^T, which carries
    exactly the row-space information of J_a (J_a^T J_a = V_a S_a^2 V_a^T, and JIVE's row spaces
    are invariant to orthogonal transforms of a block's rows).  Each block is divided by its
    Frobenius norm ||s_a||_2 so that every region weighs equally whatever the magnitude of its
    Jacobian; all singular values below are in these normalised units.  The singular values matter:
    once the joint part is projected out of bare orthonormal bases, the remaining singular values
    are all equal, so the "top" individual direction would be arbitrary; with them, it is the
    direction carrying the most Jacobian energy of the region.

    Signal subspaces (AJIVE's first step).  P_a (d, p_a): the columns of V_a that signal_mask
    keeps, p_a <= k_a.  A top-k subspace with k above a region's true rank carries k - p_a noise
    directions; they are not shared with any other region, so every automatic rule below would
    otherwise count them as individual.

    Automatic joint rank (AJIVE).  Stack the regions' signal subspaces P_a (d, sum_a p_a) and take
    the SVD.  A component is joint when its squared singular value exceeds both the
    random-direction bound (for subspaces of dimensions p_a) and K cos^2(max_angle_deg):
    sum_a cos^2(theta_a) of a unit direction at angle theta_a to region a is exactly its squared
    singular value.  The reported angles are arccos(sqrt(sigma^2 / K)).

    Automatic individual rank.  The number of region-a signal directions farther than
    max_angle_deg from the joint subspace (singular values of (I - P_J) P_a above
    sin(max_angle_deg)).  In exact data this equals the number of nonzero singular values of
    M_a (I - P_J); with noise, the joint directions estimated from the data never lie exactly in
    a region's subspace and would leave near-zero leftovers that a "nonzero" test counts as
    individual.  Those directions are then ordered by the region's energy along them.  Given
    individual ranks (with automatic joint rank), the top-r_a directions of M_a (I - P_J) are used.

    Attributes (float tensors of the input dtype, on the input device)
    ----------
    joint_basis_ : (d, r_C) orthonormal, sorted by joint_singular_values_ (energy of all
        stacked regions along each direction).
    individual_bases_ : list of (d, r_a) orthonormal, orthogonal to joint_basis_, sorted by
        individual_singular_values_ (energy of region a along each direction).
    ranks_ : {"joint": r_C, "individual": [r_a, ...]}
    signal_ranks_ : [p_a, ...], the regions' signal ranks (columns of P_a); with automatic ranks,
        r_C + r_a <= p_a.
    principal_angles_deg_ : angles of the stacked signal-subspace SVD components (ascending, one
        per stacked column of the P_a; the redundant copies of joint directions read 90).
    joint_threshold_ : squared-singular-value threshold used by the automatic joint rank, else None.
    n_iter_ : iterations of the iterative JIVE; 1 for the single AJIVE pass.
    """

    def __init__(self, joint_rank: int | None = None,
                 individual_ranks: int | Sequence[int] | None = None,
                 max_angle_deg: float = 30.0, signal_gap: float = 10.0, n_random: int = 500,
                 quantile: float = 0.95, max_iter: int = 100, tol: float = 1e-8,
                 random_state: int | None = 0):
        self.joint_rank = joint_rank
        self.individual_ranks = individual_ranks
        self.max_angle_deg = max_angle_deg
        self.signal_gap = signal_gap
        self.n_random = n_random
        self.quantile = quantile
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def get_params(self) -> dict:
        """The constructor's arguments (scikit-learn's convention): ``JIVE(**params)`` rebuilds the estimator,
        and a run stores them as its JIVE settings."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    def fit(self, bases: Sequence[torch.Tensor],
            singular_values: Sequence[torch.Tensor] | None = None) -> "JIVE":
        """Fit on per-region orthonormal bases (d, k_a) and their singular values (k_a,)."""
        self._check_params()
        V, s, dtype = _validate_blocks(bases, singular_values)
        K, d = len(V), V[0].shape[0]
        joint_rank, individual_ranks = self._check_ranks([v.shape[1] for v in V])

        X = [scaled_rows(v, s_a) for v, s_a in zip(V, s)]
        P = [v[:, signal_mask(s_a, self.signal_gap)] for v, s_a in zip(V, s)]
        self.signal_ranks_ = [p.shape[1] for p in P]
        U, sigma, _ = torch.linalg.svd(torch.cat(P, dim=1), full_matrices=False)
        sq = sigma**2
        # AJIVE's angle of each stacked component to all K signal subspaces at once (not a pairwise angle
        # between two spans, which is localedit.core.subspace.principal_angles).
        self.principal_angles_deg_ = torch.rad2deg(torch.acos((sq / K).clamp(0, 1).sqrt())).to(dtype)
        self.joint_threshold_ = None
        if joint_rank is None:
            dims = [p.shape[1] for p in P]
            bound = _random_direction_bound(d, dims, self.n_random, self.quantile,
                                            np.random.default_rng(self.random_state))
            self.joint_threshold_ = max(bound, K * math.cos(math.radians(self.max_angle_deg)) ** 2)
            joint_rank = min(int((sq > self.joint_threshold_).sum()), min(dims))

        if self.joint_rank is not None and individual_ranks is not None:
            joint, joint_sv, individual, individual_sv, self.n_iter_ = _iterative_jive(
                X, joint_rank, individual_ranks, self.max_iter, self.tol)
        else:
            U_J = U[:, :joint_rank]
            _, joint_sv, Wh = torch.linalg.svd(torch.cat(X) @ U_J, full_matrices=False)
            joint = U_J @ Wh.T
            if individual_ranks is None:
                fits = [directions_outside(x, p, joint, self.max_angle_deg) for x, p in zip(X, P)]
            else:
                fits = [_top_residual(x, joint, r) for x, r in zip(X, individual_ranks)]
            individual, individual_sv = map(list, zip(*fits))
            self.n_iter_ = 1

        self.joint_basis_ = joint.to(dtype)
        self.joint_singular_values_ = joint_sv.to(dtype)
        self.individual_bases_ = [b.to(dtype) for b in individual]
        self.individual_singular_values_ = [sv.to(dtype) for sv in individual_sv]
        self.ranks_ = {"joint": joint_rank, "individual": [b.shape[1] for b in individual]}
        return self

    def _check_params(self) -> None:
        if not 0 < self.max_angle_deg < 90:
            raise ValueError(f"max_angle_deg must be in (0, 90); got {self.max_angle_deg}")
        if not self.signal_gap > 1:
            raise ValueError(f"signal_gap must be > 1 (a drop between singular values); got {self.signal_gap}")
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1; got {self.n_random}")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1]; got {self.quantile}")
        if self.max_iter < 1 or self.tol <= 0:
            raise ValueError(f"need max_iter >= 1 and tol > 0; got {self.max_iter}, {self.tol}")

    def _check_ranks(self, dims: list[int]) -> tuple[int | None, list[int] | None]:
        joint_rank = self.joint_rank
        if joint_rank is not None and not 0 <= joint_rank <= min(dims):
            raise ValueError(
                f"joint_rank={joint_rank} must be in [0, min k_a = {min(dims)}]: "
                f"a joint direction has to lie in every region's subspace"
            )
        if self.individual_ranks is None:
            return joint_rank, None
        ranks = self.individual_ranks
        ranks = [ranks] * len(dims) if isinstance(ranks, numbers.Integral) else list(ranks)
        if len(ranks) != len(dims):
            raise ValueError(f"individual_ranks has {len(ranks)} entries for {len(dims)} regions")
        for a, (r, k) in enumerate(zip(ranks, dims)):
            if r < 0:
                raise ValueError(f"individual_ranks[{a}]={r} must be non-negative")
            if r > k:
                raise ValueError(f"individual_ranks[{a}]={r} exceeds k_{a}={k} (columns of bases[{a}])")
            if joint_rank is not None and joint_rank + r > k:
                raise ValueError(
                    f"joint_rank + individual_ranks[{a}] = {joint_rank + r} exceeds k_{a}={k}: "
                    f"joint and individual parts share the region's {k}-dimensional row space"
                )
        return joint_rank, ranks


def _validate_blocks(bases, singular_values):
    """Check the inputs; return float64 bases and singular values on the first basis' device, and the output dtype."""
    if len(bases) == 0:
        raise ValueError("bases is empty: JIVE needs at least two region subspaces")
    if len(bases) < 2:
        raise ValueError("JIVE needs at least two region subspaces to tell joint from individual")
    raw = [as_float_tensor(b) for b in bases]
    dtype = reduce(torch.promote_types, (b.dtype for b in raw))
    device = raw[0].device
    V = []
    for a, b in enumerate(raw):
        if b.ndim != 2 or b.shape[1] == 0:
            raise ValueError(f"bases[{a}] must be a (d, k) matrix with k >= 1; got shape {tuple(b.shape)}")
        if b.shape[0] != raw[0].shape[0]:
            raise ValueError(
                f"bases[{a}] has d={b.shape[0]} but bases[0] has d={raw[0].shape[0]}: "
                f"all regions must live in the same h-space"
            )
        v = b.to(device=device, dtype=torch.float64)
        if not torch.isfinite(v).all():
            raise ValueError(f"bases[{a}] contains non-finite values")
        err = (v.T @ v - torch.eye(v.shape[1], dtype=v.dtype, device=device)).abs().max().item()
        if err > _ORTHONORMAL_ATOL:
            raise ValueError(
                f"bases[{a}] does not have orthonormal columns (max |V^T V - I| = {err:.2e} > "
                f"{_ORTHONORMAL_ATOL}); pass right singular vectors of the Jacobian"
            )
        V.append(v)

    if singular_values is None:
        warnings.warn(
            "singular_values not given: every basis direction is treated as equally strong. "
            "After the joint part is projected out, the individual singular values are then all "
            "equal, so the order of the individual directions (the 'top' local edit) is arbitrary. "
            "Pass the Jacobian singular values.",
            UserWarning,
            stacklevel=3,
        )
        return V, [torch.ones(v.shape[1], dtype=torch.float64, device=device) for v in V], dtype
    if len(singular_values) != len(V):
        raise ValueError(f"got {len(singular_values)} singular-value vectors for {len(V)} bases")
    s = []
    for a, (sv, v) in enumerate(zip(singular_values, V)):
        t = as_float_tensor(sv).to(device=device, dtype=torch.float64)
        if t.shape != (v.shape[1],):
            raise ValueError(
                f"singular_values[{a}] has shape {tuple(t.shape)}; expected ({v.shape[1]},) "
                f"to match bases[{a}]"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"singular_values[{a}] contains non-finite values")
        if (t < 0).any():
            raise ValueError(f"singular_values[{a}] contains negative values")
        if t.max() == 0:
            raise ValueError(f"singular_values[{a}] are all zero: the region's Jacobian carries no energy")
        s.append(t)
    return V, s, dtype
