"""A self-contained ``report.html`` for an evaluated run: one file to open, mail or attach.

Everything is embedded (strips and plots as base64 PNG, a few lines of JS to sort tables), so
the report needs neither the run directory nor a network. It reads what the evaluation wrote:
``metrics.parquet``, ``evaluation.json`` and ``strips/``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from localedit.bundled.references import REFERENCE_PREFIX  # noqa: E402
from localedit.core.variation import RegionVariation  # noqa: E402
from localedit.evaluation import schema as col  # noqa: E402
from localedit.evaluation.baselines import METHODS  # noqa: E402
from localedit.evaluation.layout import METRICS_FILE, REPORT_FILE, STRIPS_DIR, SUMMARY_FILE, strip_path  # noqa: E402
from localedit.utils.atomic import write_atomic

LABELS = {
    "jive_individual": "JIVE individual (paper)", "jive_joint": "JIVE joint (paper)",
    "jive_complement": "JIVE + complements (ours)", "global": "global h (unmasked J)",
    "masked": "masked h, no JIVE", "loco_xspace": "LOCO-style x-space", "random": "random h",
    "region_variation": "region variation (ours)", "region_contrast": "region contrast (ours)",
    "joint_variation": "joint variation (ours)",
}


VARIATION_METHODS = ("region_variation", "joint_variation")  # found only in runs of enough images


def method_label(method: str) -> str:
    """A method's name for readers; supervised reference rows say so."""
    if method.startswith(REFERENCE_PREFIX):
        return f"reference: {method.removeprefix(REFERENCE_PREFIX).replace('_', ' ')} (supervised)"
    return LABELS.get(method, method)


SOURCE, TRANSFER = col.SOURCE_SET, col.TRANSFER_SET
# Every table header names its image set: "source" (the images directions were matched on) or "held-out"
# (transferred to), then the metric's name here and its decimals.
SET_NAMES = {SOURCE: "source", TRANSFER: "held-out"}
METRIC_NAMES = {
    col.LOCALITY: ("locality", 2), col.LOCALITY_BEST_SIGN: ("locality, better sign", 2),
    col.FACTOR_PURITY_BEST_SIGN: ("purity, better sign", 2), col.OUTSIDE_PSNR: ("outside PSNR dB", 1),
    col.OUTSIDE_SSIM: ("outside SSIM", 3), col.LPIPS: ("LPIPS", 4), col.LPIPS_OUTSIDE: ("LPIPS outside", 4),
    col.FACTOR_PURITY: ("factor purity", 2), col.GLOBAL_PURITY: ("global-factor purity", 2),
    col.INSIDE_STRENGTH: ("inside RMS", 3), col.TOTAL_CHANGE: ("RMS change", 3),
}


def _columns(*pairs: tuple[str, str]) -> list[tuple[str, str, str, int]]:
    """(metric, image set, header, decimals) of each (metric, image set)."""
    return [(metric, image_set, f"{SET_NAMES[image_set]} {METRIC_NAMES[metric][0]}", METRIC_NAMES[metric][1])
            for metric, image_set in pairs]


# The method table: each median with its interval.
METHOD_COLUMNS = _columns(
    (col.LOCALITY, SOURCE), (col.LOCALITY, TRANSFER), (col.LOCALITY_BEST_SIGN, TRANSFER),
    (col.FACTOR_PURITY_BEST_SIGN, TRANSFER), (col.OUTSIDE_PSNR, TRANSFER), (col.OUTSIDE_SSIM, TRANSFER),
    (col.LPIPS, TRANSFER), (col.LPIPS_OUTSIDE, TRANSFER), (col.FACTOR_PURITY, SOURCE), (col.FACTOR_PURITY, TRANSFER),
    (col.GLOBAL_PURITY, TRANSFER), (col.INSIDE_STRENGTH, SOURCE), (col.TOTAL_CHANGE, TRANSFER))
# The per-direction table: medians only.
DIRECTION_COLUMNS = _columns(
    (col.LOCALITY, SOURCE), (col.LOCALITY, TRANSFER), (col.LOCALITY_BEST_SIGN, TRANSFER), (col.OUTSIDE_PSNR, SOURCE),
    (col.OUTSIDE_PSNR, TRANSFER), (col.LPIPS, SOURCE), (col.LPIPS_OUTSIDE, SOURCE), (col.FACTOR_PURITY, SOURCE),
    (col.FACTOR_PURITY, TRANSFER))
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#555}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}th{background:#f5f5f5;cursor:pointer;user-select:none}
td:first-child,th:first-child{text-align:left}tr:hover td{background:#fafaf0}.ci{color:#888;font-size:11px;white-space:nowrap}
.plots img{max-width:49%}.strip{display:inline-block;margin:6px 10px 14px 0;vertical-align:top}
.strip img{image-rendering:pixelated;border:1px solid #ddd}.note{background:#fff7e0;padding:6px 10px;border-radius:4px}
.card{background:#fafafa;border:1px solid #eee;padding:4px 16px}.card img{max-width:100%}
"""
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  th.dataset.dir = dir;
  const key = r => { const c = r.cells[i], v = c.dataset.v ?? c.textContent, n = parseFloat(v); return isNaN(n) ? v : n; };
  [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return _data_uri(buf.getvalue())


def _ordered(methods) -> list[str]:
    present = list(dict.fromkeys(methods))
    return [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]


def _by_method_plot(rows: pd.DataFrame, metric: str, title: str, ylabel: str) -> str | None:
    """Box plot of a metric per method, source and transfer rows side by side."""
    data = rows[rows[col.KIND] == col.KIND_MATCHED]
    if metric not in data or pd.to_numeric(data[metric], errors="coerce").notna().sum() == 0:
        return None
    methods = _ordered(data[col.METHOD])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, (image_set, color) in zip((-0.18, 0.18), ((SOURCE, "#4c72b0"), (TRANSFER, "#dd8452"))):
        part = data[data[col.IMAGE_SET] == image_set]
        values = [pd.to_numeric(part.loc[part[col.METHOD] == m, metric], errors="coerce").dropna() for m in methods]
        positions = [i + offset for i, v in enumerate(values) if len(v)]
        if positions:
            box = ax.boxplot([v for v in values if len(v)], positions=positions, widths=0.32, patch_artist=True,
                             showfliers=False)
            for patch in box["boxes"]:
                patch.set(facecolor=color, alpha=0.6)
            ax.plot([], [], color=color, lw=8, alpha=0.6, label=image_set)
    ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], fontsize=7, rotation=25, ha="right")
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def _sweep_plot(rows: pd.DataFrame) -> str | None:
    """Median locality against the multiple of the matched alpha (the sweep rows)."""
    sweep = rows[rows[col.KIND] == col.KIND_SWEEP]
    if sweep.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method in _ordered(sweep[col.METHOD]):
        curve = sweep[sweep[col.METHOD] == method].groupby(col.ALPHA_MULT)[col.LOCALITY].median()
        ax.plot(curve.index, curve.values, marker="o", label=method_label(method))
    ax.axvline(0, color="#bbb", lw=0.8)
    ax.set(title="locality vs alpha (held-out strip images)", xlabel="alpha / matched alpha", ylabel="median locality")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _factor_plot(rows: pd.DataFrame) -> str | None:
    """Median |standardised factor change| per method (rows) and generator factor (columns)."""
    columns = col.factor_columns(rows.columns)
    data = rows[rows[col.KIND] == col.KIND_MATCHED].drop_duplicates([col.DIRECTION, col.IMAGE, col.ALPHA])
    if not columns or data.empty:
        return None
    methods = _ordered(data[col.METHOD])
    table = np.array([[data.loc[data[col.METHOD] == m, c].abs().median() for c in columns] for m in methods])
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(methods) + 1.6))
    im = ax.imshow(table, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(columns)), [c.removeprefix(col.FACTOR_PREFIX) for c in columns], rotation=45, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(methods)), [method_label(m) for m in methods], fontsize=8)
    fig.colorbar(im, ax=ax, label="median |change| (factor std)")
    ax.set_title("which generator factors the edits change (factor probe)")
    return _figure_png(fig)


def _cell(value, decimals: int, low=None, high=None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return '<td data-v="">&ndash;</td>'
    text = f"{value:.{decimals}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f' <span class="ci">[{low:.{decimals}f}, {high:.{decimals}f}]</span>'
    return f'<td data-v="{value}">{text}</td>'


def _stat(record: dict, metric: str, image_set: str, stat: str = col.MEDIAN):
    """One statistic of a summary record (``evaluation.json``), None where there is none."""
    return record.get(col.summary_key(metric, image_set, stat))


def _image_counts(record: dict, separator: str = " / ") -> str:
    """'source / transfer' image counts of a summary record."""
    return separator.join(str(record.get(col.summary_key(col.N_IMAGES, s)) or 0) for s in col.IMAGE_SETS)


def _method_table(methods: dict) -> str:
    head = "".join(f"<th>{h}</th>" for _, _, h, _ in METHOD_COLUMNS)
    body = []
    for name in _ordered(methods):
        m = methods[name]
        cells = "".join(_cell(_stat(m, c, s), d, _stat(m, c, s, col.CI_LOW), _stat(m, c, s, col.CI_HIGH))
                        for c, s, _, d in METHOD_COLUMNS)
        body.append(f"<tr><td>{html.escape(method_label(name))}</td>{cells}<td>{_image_counts(m)}</td>"
                    f"{_cell(m.get(col.ALPHA_MEDIAN), 3)}</tr>")
    table = (f'<table class="sortable"><thead><tr><th>method</th>{head}<th>images src / transfer</th>'
             f'<th>alpha</th></tr></thead><tbody>{"".join(body)}</tbody></table>')
    return table + _unscored_note(methods)


def _unscored_note(methods: dict) -> str:
    """Why some method rows are empty: the run's catalogue has no direction of theirs."""
    empty = [name for name in _ordered(methods) if methods[name].get(col.N_DIRECTIONS) == 0]
    if not empty:
        return ""
    why = (f" (region and joint variation need at least {RegionVariation().min_images} mined images)"
           if any(name in VARIATION_METHODS for name in empty) else "")
    return (f'<p class="note">{html.escape(", ".join(map(method_label, empty)))}: nothing scored; the run\'s '
            f"catalogue has no direction of theirs{html.escape(why)}.</p>")


def _direction_table(directions: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for _, _, h, _ in DIRECTION_COLUMNS)
    body = []
    for d in directions:
        cells = "".join(_cell(_stat(d, c, s), k) for c, s, _, k in DIRECTION_COLUMNS)
        body.append(f"<tr><td>{html.escape(str(d[col.DIRECTION]))}</td><td>{html.escape(method_label(d[col.METHOD]))}</td>"
                    f"<td>{html.escape(str(d.get(col.DIRECTION_REGION) or 'all'))}</td>"
                    f"{_cell(d.get(col.ALPHA_MEDIAN), 3)}{cells}</tr>")
    return (f'<table class="sortable"><thead><tr><th>direction</th><th>method</th><th>region</th><th>alpha</th>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _strips(run_dir: Path, directions: list[dict]) -> str:
    by_slug = {strip_path(run_dir, str(d[col.DIRECTION])).stem: d for d in directions}
    items = []
    for path in sorted((run_dir / STRIPS_DIR).glob("*.png")):
        d = by_slug.get(path.stem)
        if d is None:  # a strip the evaluation did not score: nothing to say beyond its name
            caption = html.escape(path.stem)
        else:
            alpha, label, share = d.get(col.ALPHA_MEDIAN), d.get(col.LABEL), d.get(col.LABEL_SHARE)
            label = f": {label} {share:.2f}" if label and share is not None else ""
            caption = html.escape(f"{method_label(d[col.METHOD])} | {d.get(col.DIRECTION_REGION) or 'all regions'}"
                                  f" | {d[col.DIRECTION]}{label}" + ("" if alpha is None else f" | matched alpha {alpha:.3g}"))
        items.append(f'<div class="strip"><div>{caption}</div><img src="{_data_uri(path.read_bytes())}"></div>')
    return "\n".join(items) or "<p>No strips were written.</p>"


def _model_card(source: str | None) -> str:
    """The model's README.md rendered, its relative images embedded; empty when there is none."""
    if not source or not (Path(source) / "README.md").is_file():
        return ""
    folder = Path(source)
    rendered = MarkdownIt("commonmark").enable("table").render((folder / "README.md").read_text())

    def embed(match):
        target = folder / html.unescape(match.group(1))
        return f'src="{_data_uri(target.read_bytes())}"' if target.is_file() and target.suffix == ".png" else match.group(0)

    body = re.sub(r'src="([^"]+)"', embed, rendered)
    return f'<h2>Model card</h2><div class="card">{body}</div>'


def _settings_text(value) -> str:
    """Evaluation settings for readers: ``key: value`` pairs (a nested group in parentheses), floats to 3
    figures, lists comma-joined, method names as the tables show them; not Python reprs of dicts."""
    if isinstance(value, dict):
        return "; ".join(f"{key.replace('_', ' ')}: " + (f"({_settings_text(v)})" if isinstance(v, dict) else _settings_text(v))
                         for key, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(method_label(v) if isinstance(v, str) else _settings_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return "auto" if value is None else str(value)


def write_report(run_dir: str | Path) -> Path:
    """Render ``run_dir/report.html`` from the evaluation's files; returns its path. FileNotFoundError (saying
    what to run) for a folder that has not been evaluated."""
    run_dir = Path(run_dir)
    absent = [name for name in (METRICS_FILE, SUMMARY_FILE) if not (run_dir / name).is_file()]
    if absent:
        what = "is not a folder" if not run_dir.is_dir() else f"has no evaluation ({', '.join(absent)} missing)"
        raise FileNotFoundError(f"{run_dir} {what}; run `localedit evaluate {run_dir}` first")
    rows = col.read_rows(run_dir / METRICS_FILE)
    result = json.loads((run_dir / SUMMARY_FILE).read_text())
    settings, methods, directions = result["settings"], result["methods"], result["directions"]
    plots = [_by_method_plot(rows, col.LOCALITY, "locality at matched strength", "share of change inside region"),
             _by_method_plot(rows, col.LPIPS_OUTSIDE, "LPIPS outside the region", "LPIPS (AlexNet)"),
             _by_method_plot(rows, col.OUTSIDE_PSNR, "change outside the region", "outside PSNR (dB)"),
             _sweep_plot(rows), _factor_plot(rows)]
    lpips_note = settings.get(col.LPIPS_NOTE, "")
    missing = lpips_note.startswith("unavailable")
    notes = [n for n in (lpips_note if missing else "", settings.get("probe_note", "")) if n]
    shown = {k: v for k, v in settings.items() if k not in ("lpips_note", "probe_note")}
    lpips_source = f'<p class="meta">{html.escape(lpips_note)}</p>' if lpips_note and not missing else ""  # where AlexNet came from
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>localedit evaluation</title>
<style>{STYLE}</style></head><body>
<h1>Local edits: locality and fidelity by method</h1>
<p class="meta">{html.escape(_settings_text(shown))}</p>
{lpips_source}{''.join(f'<p class="note">{html.escape(n)}</p>' for n in notes)}
<p>Every direction is applied at +alpha and -alpha, with alpha chosen per direction so that the edits change the
image by the same RMS amount (target {settings.get('target_change')}); metrics compare against the unedited
reconstruction. <b>Locality</b>: share of the squared pixel change inside the direction's region (chance = the
region's share of the image); <b>source</b>: on the image a direction was found on; <b>transfer</b>: on held-out
images. Region-free directions (joint, global, random) are scored on every region. A method's row pools the
edits (images and signs) of all its directions, so its median is not the median of their rows below. Brackets:
95% bootstrap intervals over images (none from a single image). Click a column to sort.</p>
<h2>Methods</h2>{_method_table(methods)}
<h2>Plots</h2><div class="plots">{''.join(f'<img src="{p}">' for p in plots if p)}</div>
<h2>Edit strips</h2><p>Held-out images; columns: the input, then the edit at multiples of the direction's
matched alpha (a=+0.00 is the unedited reconstruction); the direction's region in red.</p>{_strips(run_dir, directions)}
<h2>All directions</h2>{_direction_table(directions)}
{_model_card(settings.get('model_source'))}
<script>{SORT_JS}</script></body></html>"""
    return write_atomic(run_dir / REPORT_FILE, lambda tmp: tmp.write_text(page))


TABLE_LEGEND = ("medians on the held-out images, except src locality (the images directions were matched on); "
                "better sign: per image the more local of +alpha and -alpha, with its factor purity; alpha: matched "
                "strength; images: source/held-out")


def text_table(methods: dict) -> str:
    """The method comparison as a fixed-width text table (medians, 95% intervals for locality), then its legend."""
    def num(value, decimals):
        return "-" if value is None else f"{value:.{decimals}f}"

    def with_ci(m, metric, image_set, decimals):
        low, high = _stat(m, metric, image_set, col.CI_LOW), _stat(m, metric, image_set, col.CI_HIGH)
        ci = "" if low is None or not np.isfinite(low) else f" [{num(low, decimals)}, {num(high, decimals)}]"
        return num(_stat(m, metric, image_set), decimals) + ci

    header = ["method", "src locality", "locality", "better sign", "purity", "out PSNR", "out SSIM", "LPIPS",
              "LPIPS out", "alpha", "images"]
    lines = [[method_label(name), with_ci(m, col.LOCALITY, SOURCE, 2), with_ci(m, col.LOCALITY, TRANSFER, 2),
              with_ci(m, col.LOCALITY_BEST_SIGN, TRANSFER, 2), num(_stat(m, col.FACTOR_PURITY_BEST_SIGN, TRANSFER), 2),
              num(_stat(m, col.OUTSIDE_PSNR, TRANSFER), 1), num(_stat(m, col.OUTSIDE_SSIM, TRANSFER), 3),
              num(_stat(m, col.LPIPS, TRANSFER), 4), num(_stat(m, col.LPIPS_OUTSIDE, TRANSFER), 4),
              num(m.get(col.ALPHA_MEDIAN), 3), _image_counts(m, "/")] for name, m in
             ((name, methods[name]) for name in _ordered(methods))]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    table = "\n".join("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                      for r in [header, *lines])
    return table + "\n" + TABLE_LEGEND
