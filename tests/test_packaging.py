"""A non-editable install (a wheel) carries the bundled data and finds it without the checkout."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_installs_the_bundled_data_and_finds_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True)
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    prefix = tmp_path / "prefix"
    script = Path(sys.executable).with_name("localedit")
    had_script = script.exists()
    # --ignore-installed: without it pip first uninstalls the environment's own (editable) localedit.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed",
                    "--prefix", str(prefix), str(wheel)],
                   check=True, capture_output=True)
    assert script.exists() == had_script  # the test environment's install is untouched
    [site] = prefix.glob("lib/python*/site-packages")
    probe = ("import localedit, localedit.utils.paths as p; from localedit.core.models import load_model; "
             "from localedit.bundled.samples import load_samples; "
             "print(localedit.__file__); print(p.DATA_DIR); print(load_model().resolution, len(load_samples('heldout')[0]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}).stdout.splitlines()
    assert out[0].startswith(str(site))  # the installed copy, not the checkout
    assert out[1] == str(prefix / "share" / "localedit" / "data")
    assert out[2].split()[0] == "32" and int(out[2].split()[1]) > 0
