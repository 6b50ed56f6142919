import pytest
import torch
from diffusers import DDPMScheduler

from localedit.core.hspace import decode, encode
from localedit.core.jacobian import exact_jacobian
from localedit.core.models import from_unet
from localedit.core.parameterisation import PREDICTION_TYPES, noise_gain, to_x0, training_target
from tests.conftest import tiny_unet


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_target_and_x0_round_trip(kind):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    a = torch.tensor([0.999, 0.5, 0.05, 4e-5]).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    torch.testing.assert_close(to_x0(kind, training_target(kind, x0, noise, a), x_t, a), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_noise_gain_is_the_derivative_of_the_implied_noise(kind):
    a, x_t = torch.tensor(0.3), torch.randn(5)

    def implied_noise(output):
        return (x_t - a.sqrt() * to_x0(kind, output, x_t, a)) / (1 - a).sqrt()

    J = torch.autograd.functional.jacobian(implied_noise, torch.randn(5))
    torch.testing.assert_close(J, noise_gain(kind, a) * torch.eye(5))


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        training_target("x0", torch.zeros(1), torch.zeros(1), torch.ones(1))


def test_jacobian_is_of_the_noise_prediction_for_a_velocity_model():
    t = 500
    model = from_unet(tiny_unet(), DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"))
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    state = encode(model.unet, x_t, t)
    mask = torch.zeros(16, 16)
    mask[2:8, 3:12] = 1
    a = model.scheduler.alphas_cumprod[t]

    def masked_noise(h):
        x0 = to_x0("v_prediction", decode(model.unet, h.view_as(state.h), state), x_t, a)
        return (mask * (x_t - a.sqrt() * x0) / (1 - a).sqrt()).reshape(-1)

    reference = torch.autograd.functional.jacobian(masked_noise, state.h.reshape(-1))
    torch.testing.assert_close(exact_jacobian(model, state, mask), reference, rtol=1e-4, atol=1e-6)
