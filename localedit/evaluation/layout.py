"""Where an evaluation's results go under its directory: one place for every file name the writers and readers share."""

from __future__ import annotations

import shutil
from pathlib import Path

METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "evaluation.json"
REPORT_FILE = "report.html"
STRIPS_DIR = "strips"
# An evaluation writes its strips here and swaps them in with its metrics (``publish_strips``), so a
# stopped evaluation leaves the last finished one's strips beside the last finished one's metrics.
STAGED_STRIPS_DIR = "strips.partial"


def strip_path(out_dir: str | Path, direction_id: str, staged: bool = False) -> Path:
    """Where a direction's edit strip is under a results directory (ids hold ':' and '/'); ``staged``: where an
    evaluation in progress writes it."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in direction_id) + ".png"
    return Path(out_dir) / (STAGED_STRIPS_DIR if staged else STRIPS_DIR) / name


def discard_staged_strips(out_dir: str | Path) -> None:
    """Remove what a stopped evaluation staged (an evaluation starts with none)."""
    shutil.rmtree(Path(out_dir) / STAGED_STRIPS_DIR, ignore_errors=True)


def publish_strips(out_dir: str | Path) -> None:
    """Replace the strips with the staged ones, if any (called once the metrics are written)."""
    out = Path(out_dir)
    staged, final, old = out / STAGED_STRIPS_DIR, out / STRIPS_DIR, out / (STRIPS_DIR + ".old")
    if not staged.is_dir():
        return
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)
