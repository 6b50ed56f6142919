import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

import localedit.models as models
from localedit.models import fingerprint, from_unet, load_model, select_device
from tests.conftest import tiny_unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    unet = tiny_unet(seed=1)
    unet.save_pretrained(path)
    return path, unet


def test_local_folder_round_trip_keeps_weights_and_fingerprint(saved):
    path, unet = saved
    model = load_model(path)
    assert model.fingerprint == fingerprint(unet)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(model.unet(x, 10).sample, unet(x, 10).sample)
    assert model.scheduler.config.num_train_timesteps == 1000
    assert model.source == str(path) and model.resolution == 16


def test_diffusers_layout_with_unet_subfolder(saved, tmp_path):
    _, unet = saved
    unet.save_pretrained(tmp_path / "unet")
    assert load_model(tmp_path).fingerprint == fingerprint(unet)


def test_fingerprint_tracks_weights_and_config():
    a, b = tiny_unet(seed=1), tiny_unet(seed=1)
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.conv_out.bias[0] += 1e-3
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(tiny_unet(seed=1, channels=(8, 8))) != fingerprint(a)


def test_attention_is_switched_to_the_classic_processor():
    model = from_unet(tiny_unet())
    processors = [m.processor for m in model.unet.modules() if isinstance(m, Attention)]
    assert processors and all(type(p) is AttnProcessor for p in processors)


def test_hub_id_offline_and_bad_paths_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(OSError, match="hub ids need network access"):
        load_model("google/ddpm-nonexistent-model-for-tests")
    with pytest.raises(FileNotFoundError, match="neither a local diffusers folder nor a hub id"):
        load_model(str(tmp_path / "missing" / "model"))
    monkeypatch.setattr(models, "BUNDLED_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="bundled model is missing"):
        load_model()


def test_device_rule():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
