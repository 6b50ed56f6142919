"""Shared fixtures: tiny random UNet2DModels, so unit tests never need the bundled model."""

import os

# Tests never touch the network: the hub client reads this when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

from localedit.core.models import from_unet  # noqa: E402


@pytest.fixture(autouse=True)
def dasks_scheduler_option_is_left_as_found():
    """Fails the test that leaves Dask's global ``scheduler`` option changed (a Dask client sets it when made): a
    later test in the same pytest worker that reads a store through xarray would fail instead, far from the cause."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    assert dask.config.get("scheduler", None) == before, "Dask's global scheduler option was left changed"


def tiny_unet(size: int = 16, seed: int = 0, channels=(8, 16)) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    # Random init leaves conv_out at zero scale in some versions; perturb so eps depends on h.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


@pytest.fixture(scope="session")
def tiny_model():
    torch.set_num_threads(1)
    return from_unet(tiny_unet())


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session (a cold start is ~15 s, slower on a busy machine)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
