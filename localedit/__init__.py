"""localedit: local, reusable h-space edits of pixel-space diffusion models.

The handful of names a first script needs are importable from here (``from localedit import
load_model``); they load lazily, so ``import localedit`` (and the CLI's start) stays cheap. The
layers, bottom up: ``localedit.utils``, ``localedit.core`` (the method), ``localedit.bundled``
(the bundled face model's generator, samples and probe), ``localedit.evaluation`` and
``localedit.store`` (run store and catalogue); each imports only the layers below it.

Importing the package lets OpenMP threads sleep at barriers (``OMP_WAIT_POLICY=PASSIVE``, unless
the user set a policy) before torch loads its OpenMP runtime: with the default spinning wait, a
2-thread Jacobian on a machine whose other core is busy ran 4-6x slower than with one thread
(``benchmarks/RESULTS.md``, mining throughput; measured on a busy machine only).
"""

import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "load_model": "localedit.core.models",
    "resolve_regions": "localedit.core.regions",
    "invert": "localedit.core.ddim",
    "mine_image": "localedit.core.mining",
    "fit_region_variation": "localedit.core.variation",
    "contrast_directions": "localedit.core.contrast",
    "JIVE": "localedit.core.jive",
    "edit": "localedit.core.editing",
    "write_strip": "localedit.core.editing",
    "load_samples": "localedit.bundled.samples",
    "to_signed": "localedit.utils.pixels",
    "to_unit": "localedit.utils.pixels",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import an exported name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'localedit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
