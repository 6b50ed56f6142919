"""Bundled generator images in two subsets: for mining edits ("mine") and checking they transfer ("heldout").

The rows are stratified rather than drawn at random: with 24 images per subset a plain draw
can miss closed eyes or an end of the expression range, and then an edit that opens eyes or
turns a frown into a smile could not be evaluated on that subset. Each subset gets equal
shares of (closed | open eyes) x (six expression bins over [-1, 1]). (Subsets, not splits: in
localedit a split is JIVE's, see ``localedit.core.mining``.)

Regenerate with ``python -m localedit.bundled.samples``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from localedit.bundled.synthetic import CLOSED_EYE, render, sample_factors
from localedit.utils.imagefile import load_image  # noqa: F401  (the reader, also imported from here)
from localedit.utils.paths import DATA_DIR

SAMPLES_DIR = DATA_DIR / "samples"
SUBSETS = ("mine", "heldout")
EXPRESSION_BINS = 6
POOL_PER_IMAGE = 20  # candidates drawn per requested image; every stratum then has plenty


def _stratified_rows(n_mine: int, n_heldout: int, seed: int) -> pd.DataFrame:
    """Disjoint stratified picks from one seeded pool, tagged with their subset."""
    pool = sample_factors(POOL_PER_IMAGE * (n_mine + n_heldout), seed)
    closed = pool["eye_openness"] < CLOSED_EYE
    expression_bin = np.minimum(((pool["expression"] + 1) / 2 * EXPRESSION_BINS).astype(int), EXPRESSION_BINS - 1)
    strata = [list(pool.index[(closed == c) & (expression_bin == b)]) for c in (True, False) for b in range(EXPRESSION_BINS)]
    rng = np.random.default_rng(seed)
    for members in strata:
        rng.shuffle(members)
    picks = []
    for subset, n in zip(SUBSETS, (n_mine, n_heldout)):
        # Round-robin over the strata, starting at a random one so small n is not biased.
        order = np.roll(np.arange(len(strata)), -int(rng.integers(len(strata))))
        for i in range(n):
            stratum = strata[order[i % len(strata)]]
            if not stratum:
                raise ValueError("factor pool too small for the requested number of images")
            picks.append((subset, stratum.pop()))
    rows = pool.loc[[index for _, index in picks]].reset_index(drop=True)
    rows.insert(0, "subset", [subset for subset, _ in picks])
    return rows


def write_samples(
    out_dir: str | Path = SAMPLES_DIR, n_mine: int = 24, n_heldout: int = 24, seed: int = 2024, size: int = 32
) -> pd.DataFrame:
    """Render the stratified rows to ``{subset}_{i:03d}.png`` plus ``factors.csv``; returns the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _stratified_rows(n_mine, n_heldout, seed)
    images = render(rows.drop(columns="subset"), size)
    counters = dict.fromkeys(SUBSETS, 0)
    files = []
    for subset, image in zip(rows["subset"], images):
        name = f"{subset}_{counters[subset]:03d}.png"
        counters[subset] += 1
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(out_dir / name)
        files.append(name)
    rows.insert(0, "file", files)
    rows.to_csv(out_dir / "factors.csv", index=False)
    return rows


def load_samples(subset: str | None = None, root: str | Path = SAMPLES_DIR) -> tuple[torch.Tensor, pd.DataFrame]:
    """Bundled images (n, 3, H, W) in [0, 1] and their factor rows; subset=None loads both."""
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; use one of {SUBSETS} or None")
    root = Path(root)
    factors = pd.read_csv(root / "factors.csv")
    if subset is not None:
        factors = factors[factors["subset"] == subset].reset_index(drop=True)
    with Image.open(root / factors["file"].iloc[0]) as first:
        size = first.width
    images = torch.stack([load_image(root / f, size) for f in factors["file"]])
    return images, factors


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the bundled sample images to data/samples.")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    rows = write_samples(args.out, seed=args.seed, size=args.size)
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
