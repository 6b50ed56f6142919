import pytest
import torch
from PIL import Image

from localedit.core import editing
from localedit.core.ddim import Edit, EditSchedule, denoise
from localedit.core.editing import edit, edit_many, unit_direction, write_strip
from localedit.core.hspace import h_shape


def test_zero_alpha_is_the_reconstruction_and_edits_grow_with_alpha(tiny_model):
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    v = torch.randn(torch.Size(h_shape(tiny_model.unet)).numel(), generator=torch.Generator().manual_seed(1))
    out = edit(tiny_model, None, v, [0.0, 0.1, 0.4], num_steps=10, x_T=x_T)
    again = edit(tiny_model, None, 5 * v, [0.0, 0.1, 0.4], num_steps=10, x_T=x_T)
    assert out.shape == (2, 3, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, again)  # only the direction's orientation matters
    small = (out[:, 1] - out[:, 0]).abs().mean()
    large = (out[:, 2] - out[:, 0]).abs().mean()
    assert 0 < small < large


def test_batched_edits_equal_one_direction_at_a_time(tiny_model, monkeypatch):
    """edit_many gives each batch element its own direction and alpha, across batch chunks too."""
    monkeypatch.setattr(editing, "EDIT_BATCH", 5)  # 3 directions x 2 images x 2 alphas = 12 split into 5, 5, 2
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 16, 16, generator=g)
    V = torch.randn(3, torch.Size(h_shape(tiny_model.unet)).numel(), generator=g)
    alphas = torch.tensor([[0.1, -0.1], [0.3, 0.0], [0.2, -0.4]])
    both = edit_many(tiny_model, x_T, V, alphas, num_steps=6)
    assert both.shape == (3, 2, 2, 3, 16, 16)
    for j in range(3):
        torch.testing.assert_close(both[j], edit(tiny_model, None, V[j], alphas[j].tolist(), num_steps=6, x_T=x_T),
                                   atol=1e-5, rtol=1e-4)
    shared = edit_many(tiny_model, x_T, V, [0.1, -0.1], num_steps=6)
    torch.testing.assert_close(shared[0], both[0], atol=1e-5, rtol=1e-4)


def test_schedule_limits_where_the_edit_acts(tiny_model):
    """Compared before clamping to [0, 1]: a random tiny U-Net saturates its pixels, which can hide the late steps."""
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # Seeded: the test must not depend on which tests drew random numbers before it.
    v = unit_direction(torch.randn(torch.Size(h_shape(tiny_model.unet)).numel(),
                                   generator=torch.Generator().manual_seed(1)), tiny_model)
    base = denoise(tiny_model, x_T, 10)

    def change(schedule):
        return float((denoise(tiny_model, x_T, 10, edit=Edit(v, torch.tensor([0.1]), schedule)) - base).abs().sum())

    assert change(EditSchedule("from_t_edit", 2000)) == 0  # no step has t >= 2000
    assert change(EditSchedule("all")) > change(EditSchedule("from_t_edit", 500)) > 0


def test_bad_directions_are_refused(tiny_model):
    d = torch.Size(h_shape(tiny_model.unet)).numel()
    with pytest.raises(ValueError, match=f"this model's h-space has {d}"):
        unit_direction(torch.ones(d + 1), tiny_model)
    with pytest.raises(ValueError, match="non-zero"):
        unit_direction(torch.zeros(d), tiny_model)
    with pytest.raises(ValueError, match="exactly one of"):
        edit(tiny_model, None, torch.ones(d), [0.1])


def test_strip_layout(tmp_path):
    originals = torch.rand(2, 3, 16, 16)
    edited = torch.rand(2, 3, 3, 16, 16)
    path = write_strip(tmp_path / "s.png", originals, edited, [-0.1, 0, 0.1], box=(2, 3, 8, 12), scale=4)
    img = Image.open(path)
    assert img.size == (4 * (16 * 4 + 2), 14 + 2 * (16 * 4 + 2))
    assert img.getpixel((3 * 4, 14 + 2 * 4)) == (255, 0, 0)  # region outline, top-left corner
    assert not list(tmp_path.glob("*.partial"))
