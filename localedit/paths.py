"""Where the bundled data lives (model, probe, samples, region presets), in one place."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
