import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor

import localedit.core.models as models
from localedit.core.models import fingerprint, from_unet, load_model, save_model, select_device
from tests.conftest import tiny_unet

CASES = Path(__file__).resolve().parent / "cases"  # copies of ../shared/cases: CI has no shared folder
SCHEDULER = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    unet = tiny_unet(seed=1)
    save_model(from_unet(unet, SCHEDULER), path)
    return path, unet


def test_local_folder_round_trip_keeps_weights_and_fingerprint(saved):
    path, unet = saved
    model = load_model(path)
    assert model.fingerprint == fingerprint(unet, SCHEDULER)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(model.unet(x, 10).sample, unet(x, 10).sample)
    assert model.scheduler.config.num_train_timesteps == 1000
    assert model.source == str(path) and model.resolution == 16


def test_diffusers_layout_with_unet_subfolder(saved, tmp_path):
    _, unet = saved
    unet.save_pretrained(tmp_path / "unet")
    SCHEDULER.save_pretrained(tmp_path / "scheduler")
    assert load_model(tmp_path).fingerprint == fingerprint(unet, SCHEDULER)


def test_fingerprint_tracks_weights_and_config():
    a, b = tiny_unet(seed=1), tiny_unet(seed=1)
    assert fingerprint(a, SCHEDULER) == fingerprint(b, SCHEDULER)
    with torch.no_grad():
        b.conv_out.bias[0] += 1e-3
    assert fingerprint(a, SCHEDULER) != fingerprint(b, SCHEDULER)
    assert fingerprint(tiny_unet(seed=1, channels=(8, 8)), SCHEDULER) != fingerprint(a, SCHEDULER)


def test_attention_is_switched_to_the_classic_processor():
    model = from_unet(tiny_unet())
    processors = [m.processor for m in model.unet.modules() if isinstance(m, Attention)]
    assert processors and all(type(p) is AttnProcessor for p in processors)


def test_hub_id_offline_and_bad_paths_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(OSError, match="hub ids need network access"):
        load_model("google/ddpm-nonexistent-model-for-tests")
    with pytest.raises(FileNotFoundError, match="neither a local diffusers folder nor a hub id"):
        load_model(str(tmp_path / "missing" / "model"))
    (tmp_path / "data" / "models" / "faces").mkdir(parents=True)
    (tmp_path / "data" / "models" / "faces" / "config.json").write_text("{}")
    (tmp_path / "data" / "models" / ".hidden").mkdir()
    monkeypatch.chdir(tmp_path)  # a mistyped data/models was read as a hub id: 45 s of retries offline
    with pytest.raises(FileNotFoundError, match=r"model folder data/model does not exist \(data/ is a folder here, "
                                                r"so it is read as a path, not a hub id\); data/ has: models$"):
        load_model("data/model")
    with pytest.raises(FileNotFoundError, match=r"'data/models/nope' is neither a local diffusers folder nor a hub "
                                                r"id \(owner/name\); data/models/ has: faces$"):
        load_model("data/models/nope")
    with pytest.raises(ValueError, match="^data/models holds model folders, not a model: give one of faces$"):
        load_model("data/models")
    monkeypatch.setattr(models, "BUNDLED_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="bundled model is missing"):
        load_model()


def test_without_a_network_a_cached_hub_model_loads_and_an_uncached_one_fails_at_once(saved, monkeypatch, tmp_path):
    # offline, a hub id took 52 s of retries (46 warning lines) and ended naming a missing config.json
    import socket

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someone--tiny-ddpm"
    shutil.copytree(saved[0], repo / "snapshots" / ("a" * 40))  # the Hugging Face cache's layout
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    def no_dns(*args):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert models._hub_unreachable() == "huggingface.co: Name or service not known"
    model = load_model("someone/tiny-ddpm")
    assert model.fingerprint == fingerprint(saved[1], SCHEDULER) and model.source == "someone/tiny-ddpm"
    with pytest.raises(OSError, match=r"^hub model 'someone/other' is not in the Hugging Face cache and the hub cannot "
                                      r"be reached \(huggingface.co: Name or service not known\)"):
        load_model("someone/other")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: [])
    assert models._hub_unreachable() is None


def test_device_rule():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


# -- issue 15, kind 2: a model folder is complete and consistent, or refused ------------------


def _folder_without_scheduler(saved, tmp_path) -> Path:
    folder = tmp_path / "nosched"
    folder.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(saved[0] / name, folder)
    return folder


def test_missing_or_broken_scheduler_config_is_refused_not_defaulted(saved, tmp_path):
    """Case missing-scheduler-config: no silent default epsilon schedule for a folder that does not say."""
    folder = _folder_without_scheduler(saved, tmp_path)
    with pytest.raises(ValueError, match="has no scheduler_config.json.*cannot know what the U-Net predicts"):
        load_model(folder)
    (folder / "scheduler_config.json").write_text('{"prediction_type": "v_prediction",')
    with pytest.raises(ValueError, match="cannot read the scheduler config .*scheduler_config.json"):
        load_model(folder)
    (folder / "scheduler_config.json").write_text('["not", "an", "object"]')
    with pytest.raises(ValueError, match="is not a JSON object"):
        load_model(folder)
    (folder / "scheduler_config.json").write_text('{"prediction_type": "velocity"}')
    with pytest.raises(ValueError, match="unknown prediction_type 'velocity'"):
        load_model(folder)


def test_fingerprint_covers_the_scheduler(saved, tmp_path):
    """A catalogue mined under one schedule or parameterisation is not applied under another."""
    folder = _folder_without_scheduler(saved, tmp_path)
    fingerprints = set()
    for config in ({"prediction_type": "epsilon"}, {"prediction_type": "v_prediction"},
                   {"prediction_type": "sample"}, {"prediction_type": "epsilon", "beta_schedule": "squaredcos_cap_v2"}):
        (folder / "scheduler_config.json").write_text(json.dumps(config))
        model = load_model(folder)
        assert model.scheduler.config.prediction_type == config["prediction_type"]
        fingerprints.add(model.fingerprint)
    assert len(fingerprints) == 4


def test_every_parameterisation_inverts_to_finite_latents_or_is_refused(saved, tmp_path):
    from localedit.core.ddim import invert

    folder = _folder_without_scheduler(saved, tmp_path)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    for kind in ("epsilon", "v_prediction", "sample"):
        for zero_snr in (False, True):
            (folder / "scheduler_config.json").write_text(json.dumps({"prediction_type": kind,
                                                                     "rescale_betas_zero_snr": zero_snr}))
            try:
                model = load_model(folder)
            except ValueError as err:
                assert kind == "epsilon" and zero_snr and "does not invert" in str(err)
                continue
            assert torch.isfinite(invert(model, image, 10)).all(), (kind, zero_snr)


@pytest.mark.parametrize("case", ["listsize", "nonsquare"])
def test_sample_size_list_square_is_accepted_non_square_refused(case):
    """Case sample-size-list: diffusers allows sample_size as a list; [32, 32] is 32, [32, 64] one line."""
    folder = CASES / "sample-size-list" / case
    if case == "listsize":
        assert load_model(folder).resolution == 32
    else:
        with pytest.raises(ValueError, match=r"non-square models \(32x64\) are not supported"):
            load_model(folder)


def test_unusable_unets_and_folders_are_refused(saved, tmp_path):
    conditional = tiny_unet()
    conditional.register_to_config(num_class_embeds=10)
    with pytest.raises(ValueError, match="class-conditional"):
        from_unet(conditional)
    folder = _folder_without_scheduler(saved, tmp_path)
    SCHEDULER.save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot load a UNet2DModel from model folder"):
        load_model(folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a diffusers model folder"):
        load_model(tmp_path / "file")
