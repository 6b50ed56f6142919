import pytest
import torch

from localedit.core.hspace import encode
from localedit.core.jacobian import MaskedJacobian, exact_jacobian, subspaces
from localedit.core.subspace import principal_angles


def _max_angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(principal_angles(a, b).max())


@pytest.fixture(scope="module")
def state(tiny_model):
    return encode(tiny_model.unet, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)), 500)


@pytest.fixture(scope="module")
def masks():
    m = torch.zeros(3, 16, 16)
    m[0, 2:7, 2:14] = 1  # "eyes"
    m[1, 10:15, 4:12] = 1  # "mouth"
    m[2] = 1  # global
    return m


def test_products_match_the_explicit_jacobian(tiny_model, state, masks):
    op = MaskedJacobian(tiny_model, state, masks)
    J = exact_jacobian(tiny_model, state, masks[0])
    V = torch.randn(1, op.dim, 3)
    torch.testing.assert_close(op.jvp(V.expand(3, -1, -1))[0].reshape(3, -1).T, J @ V[0], rtol=1e-4, atol=1e-5)
    U = torch.randn(3, 2, *op.out_shape)
    torch.testing.assert_close(op.vjp(U)[0], J.T @ U[0].reshape(2, -1).T, rtol=1e-4, atol=1e-5)
    # The mask really restricts the output: pixels outside the region get nothing.
    assert torch.count_nonzero(J.view(3, 16, 16, -1)[:, :, 0]) == 0


def test_subspaces_match_exact_svd(tiny_model, state, masks):
    k = 6
    found = subspaces(tiny_model, state, masks, k=k, tol=1e-4, max_iter=200)
    for a, sub in enumerate(found):
        J = exact_jacobian(tiny_model, state, masks[a])
        _, S, Vh = torch.linalg.svd(J, full_matrices=False)
        assert sub.basis.shape == (J.shape[1], k)
        assert _max_angle_deg(sub.basis, Vh[:k].T) < 1.0
        torch.testing.assert_close(sub.singular_values, S[:k], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(sub.basis.T @ sub.basis, torch.eye(k), rtol=0, atol=1e-5)
        # Ritz vectors are individually right: each is close to its exact singular vector.
        assert torch.all((sub.basis * Vh[:k].T).sum(0).abs()[:3] > 0.999)
        assert sub.converged and sub.residual < 1e-3


def test_region_subspaces_differ(tiny_model, state, masks):
    eyes, mouth, _ = subspaces(tiny_model, state, masks, k=4, tol=1e-3)
    assert _max_angle_deg(eyes.basis, mouth.basis) > 30


def test_iteration_cap_is_reported(tiny_model, state, masks):
    (sub,) = subspaces(tiny_model, state, masks[:1], k=4, tol=1e-12, max_iter=2)
    assert sub.iterations == 2 and not sub.converged


def test_bad_arguments(tiny_model, state, masks):
    with pytest.raises(ValueError, match="regions, H, W"):
        subspaces(tiny_model, state, masks[0], k=4)
    batch_state = encode(tiny_model.unet, torch.randn(2, 3, 16, 16), 500)
    with pytest.raises(ValueError, match="one image at a time"):
        subspaces(tiny_model, batch_state, masks, k=4)


def test_a_region_gets_the_same_subspace_alone_or_batched(tiny_model, state, masks):
    """A pipeline computes an image's blocks together, or only those a resumed run lacks: same result.

    The regions converge after different numbers of iterations here, so a converged region that kept
    iterating with the others (or started from another random panel) would come out different.
    """
    batched = subspaces(tiny_model, state, masks, k=4, tol=1e-3)
    assert len({s.iterations for s in batched}) > 1
    for a in range(len(masks)):
        (alone,) = subspaces(tiny_model, state, masks[a:a + 1], k=4, tol=1e-3)
        assert alone.iterations == batched[a].iterations
        torch.testing.assert_close(alone.basis, batched[a].basis, rtol=0, atol=1e-5)  # finer than acos resolves
        torch.testing.assert_close(alone.singular_values, batched[a].singular_values, rtol=1e-5, atol=1e-7)


def test_the_linearisation_records_adjoint_convolutions_with_the_same_products(tiny_model, state, monkeypatch):
    """J v through the recorded transposed convolutions equals J v through torch's own double backward."""
    from torch.func import vjp

    from localedit.core import jacobian

    calls = []
    apply = jacobian._AdjointConv2d.apply
    monkeypatch.setattr(jacobian._AdjointConv2d, "apply", lambda *args: calls.append(1) or apply(*args))
    op = MaskedJacobian(tiny_model, state, torch.ones(1, 16, 16))
    assert calls  # the tiny U-Net's convolutions took the adjoint path
    out, pullback = vjp(op._f, state.h)  # outside the mode: torch's convolution backward
    _, push = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
    V = torch.randn(1, op.dim, 3, generator=torch.Generator().manual_seed(2))
    plain = torch.stack([push(v.view_as(state.h))[0] for v in V[0].T])
    torch.testing.assert_close(op.jvp(V)[0], plain, rtol=1e-4, atol=1e-5)  # float rounding: other kernels
    U = torch.randn(1, 3, *op.out_shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op.vjp(U)[0].T, torch.stack([pullback(u)[0].reshape(-1) for u in U[0]]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision, bound_deg", [(torch.float16, 2.0), (torch.bfloat16, 5.0)])
def test_reduced_precision_products_stay_near_the_fp32_subspace(tiny_model, state, masks, precision, bound_deg):
    exact = subspaces(tiny_model, state, masks, k=4, tol=1e-5, max_iter=200)
    reduced = subspaces(tiny_model, state, masks, k=4, tol=1e-5, max_iter=200, precision=precision)
    for a, b in zip(exact, reduced):
        assert b.basis.dtype == torch.float32
        angle = _max_angle_deg(a.basis[:, :1], b.basis[:, :1])
        # Near, but not equal: the products really ran in the reduced precision.
        assert 1e-4 < angle < bound_deg
