"""Where the bundled data lives (model, probe, samples, region presets), in one place.

In a checkout (and an editable install) it is the repository's ``data/``. A wheel installs the
same files as data files under ``<prefix>/share/localedit/data`` (``pyproject.toml``), next to
``<prefix>/lib/pythonX.Y/site-packages/localedit``.
"""

from pathlib import Path


def _data_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # localedit/, above this utils/ subpackage
    checkout = package.parent / "data"
    if checkout.is_dir():
        return checkout
    prefix = package.parents[3] if len(package.parents) > 3 else package.parent
    return prefix / "share" / "localedit" / "data"


DATA_DIR = _data_dir()
