import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from localedit.cli import main
from localedit.core.editing import write_strip
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import METHODS, REGION_FREE
from localedit.evaluation.layout import METRICS_FILE, REPORT_FILE, strip_path
from localedit.evaluation.report import LABELS, METHOD_COLUMNS, TABLE_LEGEND, text_table, write_report
from localedit.evaluation.schema import check_rows
from localedit.evaluation.summary import save_results
from tests import browser


def _rows(lpips: bool) -> pd.DataFrame:
    """Metric rows shaped like the evaluation's, with made-up values: one direction per method and region."""
    rng = np.random.default_rng(0)
    records = []
    for method in METHODS:
        for region in [None] if method in REGION_FREE else ["eyes", "mouth"]:
            direction = f"m0:{method}:{region or 'all'}"
            for image_set, images in (("source", ["m0"]), ("transfer", ["h0", "h1", "h2"])):
                for image in images:
                    for kind, mults in (("matched", (1.0, -1.0)), ("sweep", (-2.0, -1.0, 1.0, 2.0))):
                        if kind == "sweep" and image_set == "source":
                            continue
                        for mult in mults:
                            for scored in [region] if region else ["eyes", "mouth"]:
                                records.append({
                                    "direction": direction, "method": method, "direction_region": region,
                                    "space": "x" if method == "loco_xspace" else "h", "source": "m0",
                                    "image_set": image_set, "label": "", "label_share": np.nan,
                                    "image": image, "kind": kind, "alpha": 0.1 * mult, "alpha_mult": mult,
                                    "matched_alpha": 0.1, "matched": True, "target_change": 0.03, "region": scored,
                                    "total_change": 0.03, "locality": rng.uniform(), "inside_strength": 0.05,
                                    "outside_psnr": rng.uniform(25, 40), "outside_ssim": rng.uniform(0.9, 1),
                                    "lpips": rng.uniform(0, 0.1) if lpips else None,
                                    "lpips_outside": rng.uniform(0, 0.05) if lpips else None,
                                    "factor_purity": rng.uniform(), "global_purity": rng.uniform(),
                                    "factor_eye_openness": rng.normal(),
                                    "factor_lighting": rng.normal()})
    rows = pd.DataFrame(records)
    check_rows(rows)  # shaped like the evaluation's: the schema's columns
    return rows


@pytest.fixture
def evaluated(tmp_path):
    """A results directory with a strip and a model card whose figure must be embedded."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    Image.new("RGB", (8, 8), "blue").save(model_dir / "samples.png")
    (model_dir / "README.md").write_text("# faces-32\n\n| steps | loss |\n|---|---|\n| 10 | 0.5 |\n\n![samples](samples.png)\n")
    run = tmp_path / "run"
    mask = torch.zeros(16, 16)
    mask[4:8, 2:14] = 1
    write_strip(strip_path(run, "m0:masked:eyes"), torch.rand(2, 3, 16, 16), torch.rand(2, 3, 3, 16, 16),
                [-0.1, 0.0, 0.1], mask=mask)
    return run, model_dir


def _write(run, model_dir, lpips: bool):
    note = "LPIPS v0.1, AlexNet" if lpips else "unavailable: AlexNet weights not found"
    result = save_results(run, _rows(lpips), {"model_source": str(model_dir), "target_change": 0.03,
                                              "lpips_note": note, "probe_note": ""})
    return result, write_report(run)


def test_report_is_self_contained_and_complete(evaluated):
    run, model_dir = evaluated
    _, path = _write(run, model_dir, lpips=False)
    assert path == run / REPORT_FILE and not list(run.glob("*.partial"))
    page = path.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script>" in page and 'class="sortable"' in page
    for method in METHODS:
        assert LABELS[method] in page
    assert "unavailable: AlexNet weights not found" in page  # the LPIPS gap is stated, not hidden
    assert "<h2>Model card</h2>" in page and "<table>" in page  # the card's markdown table is rendered
    assert "m0:masked:eyes" in page  # the strip's caption names its direction
    # Plots: locality and outside PSNR by method, locality vs alpha, factor changes; strip; card figure.
    assert len(sources) == 4 + 1 + 1


def test_report_plots_lpips_when_it_was_measured(evaluated):
    run, model_dir = evaluated
    _, path = _write(run, model_dir, lpips=True)
    page = path.read_text()
    assert len(re.findall(r'src="data:image/png', page)) == 5 + 1 + 1
    assert "unavailable" not in page
    assert '<p class="meta">LPIPS v0.1, AlexNet</p>' in page  # where the backbone came from
    assert "<th>held-out LPIPS</th>" in page and "<th>held-out LPIPS outside</th>" in page


def test_every_table_header_names_its_image_set(evaluated):
    """Found in review: the per-direction table headed source medians with the bare metric name."""
    run, model_dir = evaluated
    _, path = _write(run, model_dir, lpips=False)
    page = path.read_text()
    tables = re.findall(r"<table[^>]*>(.*?)</table>", page, re.S)
    headers = [re.findall(r"<th>(.*?)</th>", table) for table in tables if "<th>held-out locality</th>" in table]
    assert len(headers) == 2  # the method and the per-direction tables
    identity = {"method", "direction", "region", "alpha", "images src / transfer"}
    for header in headers:
        metrics = [h for h in header if h not in identity]
        assert metrics and all(h.startswith(("source ", "held-out ")) for h in metrics), metrics
    assert "<th>held-out locality, better sign</th>" in tables[[i for i, t in enumerate(tables)
                                                                if "<th>direction</th>" in t][0]]


def test_text_table_lists_every_method_with_intervals(evaluated):
    run, model_dir = evaluated
    result, _ = _write(run, model_dir, lpips=False)
    table = text_table(result["methods"])
    lines = table.splitlines()[:-1]
    assert len(lines) == 1 + len(METHODS) and table.splitlines()[-1] == TABLE_LEGEND
    # Outside PSNR (like every metric after the first locality) is the held-out median, which the README quotes.
    for name, line in zip(METHODS, lines[1:]):
        held, source = (result["methods"][name].get(col.summary_key(col.OUTSIDE_PSNR, image_set, col.MEDIAN))
                        for image_set in (col.TRANSFER_SET, col.SOURCE_SET))
        if held is not None and f"{held:.1f}" != f"{source:.1f}":
            assert f" {held:.1f} " in line, line
    assert [line[:len(LABELS[name])] for name, line in zip(METHODS, lines[1:])] == [LABELS[m] for m in METHODS]
    assert re.search(r"0\.\d\d \[0\.\d\d, 0\.\d\d\]", table)


def test_report_speaks_to_readers_not_in_python_reprs(evaluated):
    """Found by a second new user: the header dumped dicts, the direction table showed internal method names, and
    method rows with nothing scored were unexplained."""
    run, model_dir = evaluated
    rows = _rows(lpips=False)
    rows = rows[~rows["method"].isin(["region_variation", "joint_variation"])]  # a run of too few images
    save_results(run, rows, {"model_source": str(model_dir), "target_change": 0.03, "lpips_note": "", "probe_note": "",
                             "chance_locality": {"eyes": 0.137, "mouth": 0.094},
                             "jive": {"joint_rank": None, "max_angle_deg": 30.0}}, METHODS)
    page = write_report(run).read_text()
    header = re.search(r'<p class="meta">(.*?)</p>', page).group(1)
    assert "chance locality: (eyes: 0.137; mouth: 0.094)" in header and "joint rank: auto" in header
    assert "{" not in header and "[" not in header
    table = next(t for t in re.findall(r"<table[^>]*>(.*?)</table>", page, re.S) if "<th>direction</th>" in t)
    assert "<td>region contrast (ours)</td>" in table and "<td>region_contrast</td>" not in table
    assert re.search(r"region variation \(ours\), joint variation \(ours\): nothing scored; .*at least \d+ mined images",
                     page)


def test_report_command_rewrites_the_report(evaluated, capsys):
    run, model_dir = evaluated
    _write(run, model_dir, lpips=False)
    (run / REPORT_FILE).unlink()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT_FILE)
    assert (run / REPORT_FILE).is_file()


def test_report_on_a_folder_without_an_evaluation_says_what_to_run(tmp_path, capsys):
    """Found by a new user: the README's `localedit report runs/demo` printed only a missing file's path."""
    for folder, what in ((tmp_path, "has no evaluation (metrics.parquet, evaluation.json missing)"),
                         (tmp_path / "nowhere", "is not a folder")):
        assert main(["report", str(folder)]) == 2
        assert capsys.readouterr().err.strip() == (f"localedit: error: {folder} {what}; "
                                                   f"run `localedit evaluate {folder}` first")


@pytest.mark.skipif(not browser.available(), reason="needs Debian's chromium (`apt-get install chromium`; .ci/run does)")
def test_report_reads_in_a_real_browser(evaluated, tmp_path):
    """What a reader relies on, in headless Chromium: images decoded, sortable methods table, no errors."""
    run, model_dir = evaluated
    _, path = _write(run, model_dir, lpips=True)
    with browser.Page(tmp_path) as page:
        page.open(path.resolve().as_uri())
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 5 + 1 + 1 and all(done and width > 0 for done, width in images), images
        column = ("[...document.querySelector('table.sortable').tBodies[0].rows]"
                  ".map(r => parseFloat(r.cells[{}].dataset.v))")
        header = [h for _, _, h, _ in METHOD_COLUMNS].index("source locality") + 1
        before = page.evaluate(column.format(header))
        assert len(before) == len(METHODS) and before != sorted(before)
        selector = f"table.sortable th:nth-child({header + 1})"
        page.click(selector)
        assert page.evaluate(column.format(header)) == sorted(before)
        page.click(selector)
        assert page.evaluate(column.format(header)) == sorted(before, reverse=True)
        assert page.evaluate("document.querySelector('table.sortable td').textContent") in LABELS.values()
        shot = page.screenshot(tmp_path / "report.png")
        assert page.errors() == []
    with Image.open(shot) as png:
        assert png.width >= 1000 and png.height > 2000  # the whole page, not the first screen


def test_strip_headings_name_method_and_region(evaluated):
    run, model_dir = evaluated
    unscored = strip_path(run, "eyes/individual/0")
    unscored.write_bytes(strip_path(run, "m0:masked:eyes").read_bytes())
    _, path = _write(run, model_dir, lpips=True)
    captions = re.findall(r'<div class="strip"><div>([^<]*)</div>', path.read_text())
    assert f"{LABELS['masked']} | eyes | m0:masked:eyes | matched alpha 0.1" in captions
    assert unscored.stem in captions  # a strip the evaluation did not score: its name, no empty fields
    assert not [c for c in captions if c.startswith(" |") or "|  |" in c]


def test_a_report_reads_rows_written_before_the_schema_renamed_split(evaluated):
    """metrics.parquet of an older evaluation names the image set ``split``; its report is rendered the same."""
    run, model_dir = evaluated
    _, path = _write(run, model_dir, lpips=True)
    current = path.read_text()
    rows = pd.read_parquet(run / METRICS_FILE).rename(columns={"image_set": "split"})
    rows.to_parquet(run / METRICS_FILE, index=False)
    again = write_report(run).read_text()
    assert len(re.findall(r'src="data:image/png', again)) == 5 + 1 + 1
    assert again == current
