import json

import pytest
import torch

import localedit.bundled.training as training
from localedit.bundled.training import TrainConfig, learning_rate, load_loss_log, train
from localedit.core.models import load_model

TINY = dict(resolution=16, block_out_channels=(8, 16), steps=6, batch_size=4, checkpoint_every=3, bf16=False,
            warmup_steps=2)


def test_learning_rate_warms_up_then_decays():
    c = TrainConfig(learning_rate=1e-3, final_learning_rate=1e-5, warmup_steps=10)
    assert learning_rate(c, 0.0, 0) == pytest.approx(1e-4)
    assert learning_rate(c, 0.0, 10) == pytest.approx(1e-3)
    assert learning_rate(c, 0.5, 500) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(c, 1.0, 999) == pytest.approx(1e-5)


def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    full = train(TrainConfig(**TINY), tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = training.sample_faces

    def crash_on_fifth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "sample_faces", crash_on_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**TINY), tmp_path / "resumed", progress=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(training, "sample_faces", real)
    resumed = train(TrainConfig(**TINY), tmp_path / "resumed", progress=False)
    assert resumed.steps == full.steps == 6
    a = load_model(full.model_dir).unet.state_dict()
    b = load_model(resumed.model_dir).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in load_loss_log(tmp_path / "resumed")] == list(range(1, 7))
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(**dict(TINY, batch_size=5)), tmp_path / "resumed", progress=False)


def test_training_flow_publishes_a_loadable_model_with_card(tmp_path, prefect_api):
    from flows.train import train_face_model

    torch.set_num_threads(1)
    card = train_face_model(resolution=16, block_out_channels=(8, 16), steps=4, batch_size=4,
                            time_budget_minutes=None, work_dir=str(tmp_path / "work"),
                            out_dir=str(tmp_path / "model"), quality_samples=0)
    out = tmp_path / "model"
    text = (out / "README.md").read_text()
    assert card == str(out / "README.md")
    assert "Training configuration" in text and "samples.png" in text
    assert (out / "samples.png").stat().st_size > 0 and (out / "loss_curve.png").stat().st_size > 0
    model = load_model(out)
    assert model.resolution == 16 and model.unet.config.block_out_channels == [8, 16]
    assert json.loads((out / "training.json").read_text())["config"]["steps_done"] == 4


def test_fine_tune_starts_from_the_given_weights_and_checks_the_architecture(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    first = train(TrainConfig(**dict(TINY, steps=2, prediction_type="epsilon")), tmp_path / "eps", progress=False)
    seen = {}
    real_ema = training._update_ema

    def record_start(ema, model, decay):
        seen.setdefault("ema_before_first_update", {k: v.clone() for k, v in ema.state_dict().items()})
        real_ema(ema, model, decay)

    monkeypatch.setattr(training, "_update_ema", record_start)
    tuned = train(TrainConfig(**dict(TINY, steps=2, init_from=str(first.model_dir))), tmp_path / "v", progress=False)
    source = load_model(first.model_dir).unet.state_dict()
    assert all(torch.equal(source[k], seen["ema_before_first_update"][k]) for k in source)
    assert load_model(tuned.model_dir).scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="another architecture"):
        train(TrainConfig(**dict(TINY, block_out_channels=(8, 8), init_from=str(first.model_dir))),
              tmp_path / "other", progress=False)
