import pytest
import torch

from localedit.core.hspace import decode, encode, h_shape, shift_h


def test_decode_reproduces_unet_exactly(tiny_model):
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([10, 500, 990])
    state = encode(tiny_model.unet, x, t)
    assert torch.equal(decode(tiny_model.unet, state.h, state), tiny_model.unet(x, t).sample)


def test_batch_of_h_shares_one_state(tiny_model):
    x = torch.randn(1, 3, 16, 16)
    state = encode(tiny_model.unet, x, 300)
    hs = state.h + 0.1 * torch.randn(4, *state.shape)
    batched = decode(tiny_model.unet, hs, state)
    one_by_one = torch.cat([decode(tiny_model.unet, h[None], state) for h in hs])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_vmap_over_decode(tiny_model):
    state = encode(tiny_model.unet, torch.randn(1, 3, 16, 16), 300)
    hs = state.h + 0.1 * torch.randn(3, *state.h.shape)
    out = torch.func.vmap(lambda h: decode(tiny_model.unet, h, state))(hs)
    torch.testing.assert_close(out[1], decode(tiny_model.unet, hs[1], state), rtol=1e-5, atol=1e-5)


def test_shift_h_adds_relative_offset_and_always_removes_hook(tiny_model):
    unet = tiny_model.unet
    x = torch.randn(2, 3, 16, 16)
    state = encode(unet, x, 400)
    v = torch.randn(state.dim)
    v = v / v.norm()
    alphas = torch.tensor([0.0, 0.3])
    with shift_h(unet, v, alphas):
        shifted = unet(x, 400).sample
    norms = state.h.flatten(1).norm(dim=1)
    expected_h = state.h + (alphas * norms).view(-1, 1, 1, 1) * v.view(1, *state.shape)
    torch.testing.assert_close(shifted, decode(unet, expected_h, state), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shifted[0], unet(x, 400).sample[0])
    with pytest.raises(RuntimeError):
        with shift_h(unet, v, alphas):
            raise RuntimeError("boom")
    assert not unet.mid_block._forward_hooks
    assert h_shape(unet) == state.shape
