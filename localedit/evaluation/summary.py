"""From metric rows to what people read: medians with image-bootstrap intervals, per method and per direction.

Also where results live on disk: ``metrics.parquet`` (every row) and ``evaluation.json``
(settings and summaries), each written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from localedit.evaluation import schema as col
from localedit.evaluation.layout import METRICS_FILE, SUMMARY_FILE, publish_strips
from localedit.utils.atomic import write_atomic


def bootstrap_median(values, groups, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Median and a percentile-bootstrap interval that resamples whole groups (images), not rows.

    Rows of one image (both signs, several regions) are not independent, so the image is the unit. One image
    gives no interval (NaN bounds, which reports leave out): every resample is that image, and a zero-width
    "interval" would read as certainty.
    """
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(v)
    v, g = v[keep], pd.factorize(np.asarray(groups)[keep])[0]
    if len(v) == 0:
        return (math.nan,) * 3
    if g.max() == 0:
        return float(np.median(v)), math.nan, math.nan
    order = np.argsort(v)
    v, g = v[order], g[order]
    counts = np.random.default_rng(seed).multinomial(g.max() + 1, np.full(g.max() + 1, 1 / (g.max() + 1)), n_boot)
    cum = counts[:, g].cumsum(1)
    half = cum[:, -1:] / 2  # integer weights: the two middle rows (the same one when the total is odd)
    medians = (v[(cum >= half).argmax(1)] + v[(cum > half).argmax(1)]) / 2
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(v)), float(lo), float(hi)


def with_best_sign(matched: pd.DataFrame) -> pd.DataFrame:
    """Add ``locality_best_sign`` and ``factor_purity_best_sign``: per (direction, image, region), the values of
    the more local of the +alpha and -alpha edits (an eye-opening direction cannot also close closed eyes)."""
    keys = [col.DIRECTION, col.IMAGE, col.REGION, col.IMAGE_SET]
    locality = pd.to_numeric(matched[col.LOCALITY], errors="coerce")
    best = locality.groupby([matched[k] for k in keys]).transform("idxmax")
    out = matched.assign(**{col.LOCALITY_BEST_SIGN: locality.groupby([matched[k] for k in keys]).transform("max")})
    if col.FACTOR_PURITY in matched:
        purity = pd.to_numeric(matched[col.FACTOR_PURITY], errors="coerce")
        out = out.assign(**{col.FACTOR_PURITY_BEST_SIGN: purity.reindex(best.fillna(-1).astype(int)).to_numpy()})
    return out


def summarize(rows: pd.DataFrame, by: Sequence[str] = (col.METHOD,), intervals: bool = True) -> pd.DataFrame:
    """Medians (and image-bootstrap intervals) of the matched rows per group, source and transfer side by side."""
    matched = with_best_sign(rows[rows[col.KIND] == col.KIND_MATCHED])
    records = []
    for key, group in matched.groupby(list(by), dropna=False, sort=False):
        record = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for image_set in col.IMAGE_SETS:
            part = group[group[col.IMAGE_SET] == image_set]
            record[col.summary_key(col.N_ROWS, image_set)] = len(part)
            record[col.summary_key(col.N_IMAGES, image_set)] = int(part[col.IMAGE].nunique())
            for metric in col.SUMMARY_METRICS:
                values = pd.to_numeric(part[metric], errors="coerce") if metric in part else pd.Series(dtype=float)
                if intervals:
                    stats = zip((col.MEDIAN, col.CI_LOW, col.CI_HIGH), bootstrap_median(values, part[col.IMAGE]))
                    record.update({col.summary_key(metric, image_set, stat): value for stat, value in stats})
                else:
                    record[col.summary_key(metric, image_set, col.MEDIAN)] = (
                        float(values.median()) if values.notna().any() else math.nan)
        record[col.N_DIRECTIONS] = int(group[col.DIRECTION].nunique())
        record[col.ALPHA_MEDIAN] = float(group[col.MATCHED_ALPHA].median())
        record[col.MATCHED_SHARE] = float(group.drop_duplicates(col.DIRECTION)[col.MATCHED].mean())
        records.append(record)
    return pd.DataFrame.from_records(records)


def _clean(value):
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def comparison_json(summary: pd.DataFrame, lpips_note: str, expected: Sequence[str] = ()) -> dict:
    """{"methods": {method: {metric: value}}}; NaN (no data, e.g. LPIPS unavailable) becomes null.

    An ``expected`` method without any direction (e.g. JIVE found no joint direction on any
    image) is listed with null values and ``n_directions`` 0 rather than left out.
    """
    methods = {}
    for record in summary.to_dict("records"):
        name = record.pop(col.METHOD)
        methods[name] = {k: _clean(v) for k, v in record.items()} | {col.LPIPS_NOTE: lpips_note}
    empty = dict.fromkeys((c for c in summary.columns if c != col.METHOD), None) | {col.N_DIRECTIONS: 0}
    for name in expected:
        methods.setdefault(name, empty | {col.LPIPS_NOTE: lpips_note, col.NOTE: "no direction of this method was found"})
    return {"methods": methods}


def save_results(out_dir: str | Path, rows: pd.DataFrame, settings: dict, methods: Sequence[str] = ()) -> dict:
    """Write ``metrics.parquet`` (every row) and ``evaluation.json`` (settings, per-method and per-direction medians).

    ``methods`` are listed in the summary even when none of their directions was found.

    Each file is written under a temporary name and renamed, so a crash leaves no half-written file; the
    evaluation's staged strips then replace the previous ones (``layout.publish_strips``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = comparison_json(summarize(rows), settings.get(col.LPIPS_NOTE, ""), methods)
    keys = [c for c in col.DIRECTION_KEYS if c in rows]
    per_direction = summarize(rows, by=keys, intervals=False)
    result = {"settings": settings, **summary,
              "directions": [{k: _clean(v) for k, v in r.items()} for r in per_direction.to_dict("records")]}
    write_atomic(out / METRICS_FILE, lambda p: rows.to_parquet(p, index=False))
    write_atomic(out / SUMMARY_FILE, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    publish_strips(out)
    return result


