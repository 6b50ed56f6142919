"""Where an evaluation's results go under its directory: one place for every file name the writers and readers share."""

from __future__ import annotations

from pathlib import Path

METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "evaluation.json"
REPORT_FILE = "report.html"
STRIPS_DIR = "strips"


def strip_path(out_dir: str | Path, direction_id: str) -> Path:
    """Where a direction's edit strip goes under a results directory (ids hold ':' and '/')."""
    return Path(out_dir) / STRIPS_DIR / ("".join(c if c.isalnum() or c in "-_" else "_" for c in direction_id) + ".png")
