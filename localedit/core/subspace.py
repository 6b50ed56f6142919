"""Linear algebra on subspaces of h-space, written once: projection, principal angles, sign conventions.

A subspace is held as a basis: a (d, r) matrix (or a batch (..., d, r)) with orthonormal
columns. The Jacobian engine, JIVE, the consensus over images, the baselines and the
benchmarks all project onto such spans, measure angles between them and fix the arbitrary
signs of singular vectors; they do it here, so every caller agrees on the conventions.
"""

from __future__ import annotations

import math

import torch

__all__ = ["as_float_tensor", "fix_signs", "largest_angle_sine", "orthonormal_columns", "principal_angles", "project_out"]


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x`` minus its projection onto span(basis): (I - B B^T) x.

    ``basis`` (..., d, r) has orthonormal columns; ``x`` is (..., d, m) or a vector (d,), and
    keeps its shape. Batched over leading dimensions (one basis per batch entry).
    """
    return x - basis @ (basis.transpose(-2, -1) @ x)


def largest_angle_sine(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Sine of the largest principal angle between span(A) and span(B): ||(I - A A^T) B||_2, shape (...,).

    A (..., d, p) and B (..., d, q) orthonormal with q <= p (for q > p it is 1 whenever B has a
    direction outside span(A)). Batched, and cheap enough for a convergence test every iteration;
    ``principal_angles`` gives every angle, in degrees.
    """
    return torch.linalg.matrix_norm(project_out(B, A), ord=2).clamp(max=1.0)


def principal_angles(A, B) -> torch.Tensor:
    """Principal angles in degrees, ascending, between the spans of orthonormal bases A (d, p), B (d, q).

    Returns min(p, q) angles, in the promoted dtype of the inputs.  Angles below 45 degrees come
    from sines, the rest from cosines: arccos alone cannot resolve angles below ~1e-6 degrees in
    float64 (~0.03 in float32), which is exactly the regime of subspace-recovery checks.
    """
    A, B = as_float_tensor(A), as_float_tensor(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(
            f"A and B must be (d, p) and (d, q) matrices with the same d; "
            f"got shapes {tuple(A.shape)} and {tuple(B.shape)}"
        )
    dtype = torch.promote_types(A.dtype, B.dtype)
    A64 = A.to(torch.float64)
    B64 = B.to(device=A.device, dtype=torch.float64)
    if A64.shape[1] < B64.shape[1]:
        A64, B64 = B64, A64  # each of the min(p, q) columns of B gets one angle
    cos = torch.linalg.svdvals(A64.T @ B64).clamp(max=1.0)  # descending, i.e. angles ascending
    sin = torch.linalg.svdvals(project_out(B64, A64)).flip(0).clamp(max=1.0)
    radians = torch.where(cos > math.sqrt(0.5), torch.asin(sin), torch.acos(cos))
    return torch.rad2deg(radians).to(dtype)


def fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Singular vectors (d, m) with each column's largest-magnitude entry made positive.

    SVD and eigensolvers return each vector up to its sign; the sign decides which way an edit
    direction points (which of +alpha and -alpha opens the eyes), so runs and machines must agree.
    """
    peak = u.gather(0, u.abs().argmax(0, keepdim=True))
    return _flip_columns(u, peak)


def orthonormal_columns(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns (d, m) spanning x's (d, m) column by column, each keeping its column's orientation.

    QR with R's diagonal made positive: column j is the part of x[:, j] orthogonal to the columns
    before it, normalised, so an input that is orthonormal already comes back unchanged (plain QR
    may flip any column).
    """
    q, r = torch.linalg.qr(x)
    return _flip_columns(q, torch.diagonal(r, dim1=-2, dim2=-1).unsqueeze(-2))


def _flip_columns(u: torch.Tensor, sign_of: torch.Tensor) -> torch.Tensor:
    """Negate the columns of ``u`` (..., d, m) where ``sign_of`` (..., 1, m) is negative."""
    return u * torch.where(sign_of < 0, -1.0, 1.0).to(u.dtype)


def as_float_tensor(x) -> torch.Tensor:
    """A tensor view of array-like ``x``; integer input becomes the default float dtype (bases are real)."""
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())
