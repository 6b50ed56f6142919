"""The shared subspace helpers against exact values: projections, principal angles, sign conventions."""

import math

import pytest
import torch

from localedit.core.subspace import fix_signs, largest_angle_sine, orthonormal_columns, principal_angles, project_out

F64 = torch.float64


def _orthonormal(d, k, g):
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))[0]


def _rotated(degrees):
    """A = e_1..e_p and B whose j-th column is rotated by degrees[j] towards e_{p+j}: known principal angles."""
    E = torch.eye(2 * len(degrees), dtype=F64)
    rad = torch.deg2rad(torch.as_tensor(degrees, dtype=F64))
    p = len(degrees)
    return E[:, :p], torch.cos(rad) * E[:, :p] + torch.sin(rad) * E[:, p:]


def test_principal_angles_known_values_and_small_angle_accuracy():
    g = torch.Generator().manual_seed(1)
    E = _orthonormal(40, 7, g)
    degrees = torch.tensor([1e-5, 30.0, 80.0], dtype=F64)
    rad = torch.deg2rad(degrees)
    A = E[:, :3]
    B = torch.cos(rad) * E[:, :3] + torch.sin(rad) * E[:, 3:6]
    got = principal_angles(A, B)
    torch.testing.assert_close(got, degrees, rtol=1e-6, atol=1e-9)  # arccos alone gives ~1e-6 deg error
    # symmetric, and a wider subspace gives min(p, q) angles
    torch.testing.assert_close(principal_angles(B, A), degrees, rtol=1e-6, atol=1e-9)
    wide = torch.cat([A, E[:, 6:7]], dim=1)
    torch.testing.assert_close(principal_angles(wide, B), degrees, rtol=1e-6, atol=1e-9)
    assert principal_angles(A.float(), B.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="same d"):
        principal_angles(A, B[:-1])


def test_largest_angle_sine_is_batched_and_exact():
    A1, B1 = _rotated([10.0, 40.0])
    A2, B2 = _rotated([0.0, 90.0])
    got = largest_angle_sine(torch.stack([A1, A2]), torch.stack([B1, B2]))
    torch.testing.assert_close(got, torch.tensor([math.sin(math.radians(40)), 1.0], dtype=F64))
    assert float(largest_angle_sine(A1, A1)) == pytest.approx(0.0, abs=1e-15)


def test_project_out_leaves_what_is_orthogonal_to_the_span():
    g = torch.Generator().manual_seed(2)
    Q = _orthonormal(30, 5, g)
    basis, outside = Q[:, :2], Q[:, 2:]
    x = basis @ torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=F64) + outside[:, :2]
    torch.testing.assert_close(project_out(x, basis), outside[:, :2])
    v = 2 * basis[:, 0] + outside[:, 0]  # a vector keeps its shape
    torch.testing.assert_close(project_out(v, basis), outside[:, 0])
    torch.testing.assert_close(project_out(basis, basis), torch.zeros_like(basis), atol=1e-15, rtol=0)


def test_fix_signs_makes_each_columns_largest_entry_positive_whatever_sign_it_came_with():
    u = torch.tensor([[0.6, 0.1], [-0.8, 0.0], [0.0, -0.99]])
    fixed = fix_signs(u)
    torch.testing.assert_close(fixed, torch.tensor([[-0.6, -0.1], [0.8, 0.0], [0.0, 0.99]]))
    torch.testing.assert_close(fix_signs(-u), fixed)  # the convention does not depend on the input's signs
    torch.testing.assert_close(fix_signs(fixed), fixed)


def test_orthonormal_columns_keep_each_columns_orientation():
    g = torch.Generator().manual_seed(3)
    Q = _orthonormal(20, 3, g)
    torch.testing.assert_close(orthonormal_columns(Q), Q)  # orthonormal already: unchanged, no column flipped
    x = torch.stack([-Q[:, 0] * 2, Q[:, 1] + Q[:, 0], -Q[:, 2]], 1)
    torch.testing.assert_close(orthonormal_columns(x), torch.stack([-Q[:, 0], Q[:, 1], -Q[:, 2]], 1))
