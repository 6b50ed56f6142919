"""The evaluation's columns, written down once: metric rows (``metrics.parquet``) and summaries (``evaluation.json``).

Every writer (``scoring.score_edits``, ``metrics.image_metrics``, ``summary``) and every reader
(``summary``, ``report``, the tasks, the benchmarks) names a column through the constants here,
so a renamed or misspelt column fails at import, not as an empty plot. A column is a ``str``
(use it wherever pandas or JSON wants the name) that also carries its meaning and unit.

**Metric rows**: one row per (direction, image, alpha, scored region). A region-tied direction
is scored on its own region; a region-free one (joint, global, random) on every region, so it
has one row per region. The reference for every metric is the unedited reconstruction
(alpha = 0). ``check_rows`` says whether a frame has exactly these columns.

**Summaries**: medians (and image-bootstrap intervals) of the matched rows per method (and per
direction), one set of keys per image set: ``summary_key(LOCALITY, TRANSFER, MEDIAN)`` is
``"transfer_locality_median"``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class Column(str):
    """A column name that carries its meaning and unit; compares, hashes and serialises as the plain name."""

    meaning: str
    unit: str

    def __new__(cls, name: str, meaning: str, unit: str = "") -> "Column":
        column = super().__new__(cls, name)
        column.meaning, column.unit = meaning, unit
        return column

    def __reduce__(self):  # pickles (Prefect results, process pools) as a Column again
        return Column, (str(self), self.meaning, self.unit)


# -- values of the categorical columns ------------------------------------------------------------

SOURCE_SET = "source"  # image_set: the image(s) a direction was matched on (found on, for per-image methods)
TRANSFER_SET = "transfer"  # image_set: held-out images (the paper's claim is that directions transfer)
IMAGE_SETS = (SOURCE_SET, TRANSFER_SET)
KIND_MATCHED = "matched"  # kind: edited at +-(matched alpha); what summaries are made of
KIND_SWEEP = "sweep"  # kind: edited at multiples of the matched alpha (strips, locality vs alpha)
KINDS = (KIND_MATCHED, KIND_SWEEP)

# -- metric rows: which direction, image and edit a row is about --------------------------------

DIRECTION = Column("direction", "the direction's id (``<source>:<method>:<region>``, ``catalogue:<id>``, ...)")
METHOD = Column("method", "the method that found the direction (``baselines.METHODS``, or ``reference_<factor>``)")
DIRECTION_REGION = Column("direction_region", "the region the direction is tied to; None for a region-free one")
SPACE = Column("space", 'where the direction is added: "h" (every reverse step) or "x" (once, to x_t)')
SOURCE = Column("source", "key of the image the direction was mined on; None for one found on many images")
IMAGE_SET = Column("image_set", f"which images the row is scored on: {SOURCE_SET!r} or {TRANSFER_SET!r}")
LABEL = Column("label", "the generator factor the direction moves most (catalogue reading); '' when unread")
LABEL_SHARE = Column("label_share", "share of the direction's factor change on ``label``", "fraction")
IMAGE = Column("image", "key of the edited image")
KIND = Column("kind", f"{KIND_MATCHED!r} (at +-matched alpha) or {KIND_SWEEP!r} (at multiples of it)")
ALPHA = Column("alpha", "edit strength: the step added is alpha * ||h|| * v (x-space: alpha * ||x_t|| * v)",
               "multiple of the norm")
ALPHA_MULT = Column("alpha_mult", "alpha / matched_alpha", "ratio")
MATCHED_ALPHA = Column("matched_alpha", "the alpha whose edits change the matching images by target_change",
                       "multiple of the norm")
MATCHED = Column("matched", "whether the matched change is within tolerance of the target (a direction may saturate)")
TARGET_CHANGE = Column("target_change", "the RMS pixel change the strength was matched to", "RMS of [0, 1] pixels")
REGION = Column("region", "the region the row's metrics are measured against")

# -- metric rows: what an edit did (``metrics.image_metrics``) -------------------------------------

TOTAL_CHANGE = Column("total_change", "RMS pixel change of the whole image", "RMS of [0, 1] pixels")
LOCALITY = Column("locality", "share of the squared pixel change inside the region (chance: the region's area share)",
                  "fraction")
INSIDE_STRENGTH = Column("inside_strength", "RMS pixel change inside the region", "RMS of [0, 1] pixels")
OUTSIDE_PSNR = Column("outside_psnr", "PSNR outside the region (infinite when nothing outside changed)", "dB")
OUTSIDE_SSIM = Column("outside_ssim", "SSIM outside the region", "SSIM in [-1, 1]")
LPIPS = Column("lpips", "LPIPS v0.1 (AlexNet) of the whole image; None when LPIPS is unavailable", "LPIPS distance")
LPIPS_OUTSIDE = Column("lpips_outside", "spatial LPIPS averaged outside the region", "LPIPS distance")
RANDOM_LPIPS = Column("random_backbone_lpips", "LPIPS heads on a random AlexNet: a plumbing test, never a result",
                      "LPIPS distance")
RANDOM_LPIPS_OUTSIDE = Column("random_backbone_lpips_outside", "the random-backbone LPIPS outside the region",
                              "LPIPS distance")
PERCEPTUAL = {LPIPS: LPIPS_OUTSIDE, RANDOM_LPIPS: RANDOM_LPIPS_OUTSIDE}  # a network's label -> its outside column

# -- metric rows: what the factor probe read (only with a probe) -----------------------------------

FACTOR_PURITY = Column("factor_purity", "share of the (standardised, squared) factor change on the region's factors",
                       "fraction")
GLOBAL_PURITY = Column("global_purity", "share of the factor change on the generator's global factors", "fraction")
FACTOR_PREFIX = "factor_"  # + a probe factor: that factor's predicted change, in units of its std

# -- derived from the matched rows (``summary.with_best_sign``) ------------------------------------

LOCALITY_BEST_SIGN = Column("locality_best_sign", "locality of the more local of the +alpha and -alpha edits",
                            "fraction")
FACTOR_PURITY_BEST_SIGN = Column("factor_purity_best_sign", "factor purity of that more local edit", "fraction")

IDENTITY = (DIRECTION, METHOD, DIRECTION_REGION, SPACE, SOURCE, IMAGE_SET, LABEL, LABEL_SHARE, IMAGE, KIND, ALPHA,
            ALPHA_MULT, MATCHED_ALPHA, MATCHED, TARGET_CHANGE, REGION)
IMAGE_METRICS = (TOTAL_CHANGE, LOCALITY, INSIDE_STRENGTH, OUTSIDE_PSNR, OUTSIDE_SSIM)
PROBE_METRICS = (FACTOR_PURITY, GLOBAL_PURITY)
DIRECTION_KEYS = (DIRECTION, METHOD, DIRECTION_REGION, SPACE, SOURCE, LABEL, LABEL_SHARE)  # one per direction
ROW_COLUMNS = {c: c for c in (*IDENTITY, *IMAGE_METRICS, *PERCEPTUAL, *PERCEPTUAL.values(), *PROBE_METRICS,
                              LOCALITY_BEST_SIGN, FACTOR_PURITY_BEST_SIGN)}


def factor_column(factor: str) -> Column:
    """The column of one probe factor's predicted change."""
    return Column(FACTOR_PREFIX + factor, f"predicted change of the generator factor {factor}", "factor std")


def factor_columns(columns) -> list[str]:
    """The per-factor change columns among ``columns`` (not ``factor_purity``, which shares the prefix)."""
    return [c for c in columns if c.startswith(FACTOR_PREFIX) and c not in ROW_COLUMNS]


def check_rows(rows: pd.DataFrame) -> None:
    """ValueError unless ``rows`` has every identity and image-metric column, at most one perceptual network's
    pair, both probe columns or neither (with per-factor columns), nothing else, and known categorical values."""
    columns = set(rows.columns)
    missing = [c for c in (*IDENTITY, *IMAGE_METRICS) if c not in columns]
    unknown = sorted(c for c in columns if c not in ROW_COLUMNS and c not in factor_columns([c]))
    perceptual = [label for label in PERCEPTUAL if label in columns or PERCEPTUAL[label] in columns]
    problems = [f"missing columns {missing}"] if missing else []
    problems += [f"unknown columns {unknown}"] if unknown else []
    if len(perceptual) > 1 or any((label in columns) != (PERCEPTUAL[label] in columns) for label in perceptual):
        problems.append(f"perceptual columns must be one network's pair; got {perceptual}")
    probe = [c in columns for c in PROBE_METRICS]
    if any(probe) != all(probe) or any(probe) != bool(factor_columns(columns)):
        problems.append("the probe's columns (factor_purity, global_purity, factor_<name>) come all or none")
    for column, allowed in ((IMAGE_SET, IMAGE_SETS), (KIND, KINDS)):
        if column in columns and not rows[column].isin(allowed).all():
            problems.append(f"{column} holds {sorted(set(rows[column]) - set(allowed))}; allowed: {allowed}")
    if problems:
        raise ValueError("metric rows do not match localedit.evaluation.schema: " + "; ".join(problems))


LEGACY_NAMES = {"split": IMAGE_SET}  # metrics.parquet written before the schema called it image_set


def read_rows(path: str | Path) -> pd.DataFrame:
    """A ``metrics.parquet``, its columns under today's names (older evaluations wrote ``split``)."""
    rows = pd.read_parquet(path)
    return rows.rename(columns={old: new for old, new in LEGACY_NAMES.items() if old in rows and new not in rows})


# -- summaries (evaluation.json) -------------------------------------------------------------------

SUMMARY_METRICS = (LOCALITY, OUTSIDE_PSNR, OUTSIDE_SSIM, INSIDE_STRENGTH, LPIPS, LPIPS_OUTSIDE, FACTOR_PURITY,
                   GLOBAL_PURITY, TOTAL_CHANGE, LOCALITY_BEST_SIGN, FACTOR_PURITY_BEST_SIGN)
MEDIAN, CI_LOW, CI_HIGH = "median", "ci_low", "ci_high"  # a metric's statistics (95% image-bootstrap interval)
N_ROWS = Column("n_rows", "matched rows of the image set")
N_IMAGES = Column("n_images", "distinct images of the image set")
N_DIRECTIONS = Column("n_directions", "directions of the group (0: a method none of whose directions was found)")
ALPHA_MEDIAN = Column("alpha_median", "median matched alpha of the group's rows", "multiple of the norm")
MATCHED_SHARE = Column("matched_share", "share of the group's directions whose strength matching met the target",
                       "fraction")
LPIPS_NOTE = Column("lpips_note", "where the LPIPS network came from, or why there is none")
NOTE = Column("note", "why a method has no values")
_SET_PREFIX = {SOURCE_SET: "", TRANSFER_SET: "transfer_"}


def summary_key(name: str, image_set: str = SOURCE_SET, stat: str | None = None) -> str:
    """The summary key of a metric's statistic (or of N_ROWS, N_IMAGES) on an image set:
    ``summary_key(LOCALITY, TRANSFER_SET, MEDIAN) == "transfer_locality_median"``."""
    return _SET_PREFIX[image_set] + name + (f"_{stat}" if stat else "")
