import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler

from localedit.bundled.probe import FactorProbe, factor_purity, region_factors
from localedit.bundled.synthetic import FACTORS
from localedit.core.hspace import h_shape
from localedit.core.regions import box
from localedit.evaluation import schema as col
from localedit.evaluation.baselines import METHODS, REGION_FREE, Direction, method_directions
from localedit.evaluation.compare import compare
from localedit.evaluation.layout import METRICS_FILE, STAGED_STRIPS_DIR, STRIPS_DIR, SUMMARY_FILE
from localedit.evaluation.matching import Match, match_strength
from localedit.evaluation.metrics import random_backbone_lpips
from localedit.evaluation.scoring import (
    ALPHA_HINT,
    SWEEP,
    Scorer,
    apply_direction,
    match_direction,
    prepare_images,
    score_direction,
    score_edits,
)
from localedit.evaluation.summary import bootstrap_median, save_results
from tests.conftest import tiny_unet


def _power_law(scale, power):
    calls = []

    def measure(alpha):
        calls.append(alpha)
        return scale * alpha**power, alpha

    return measure, calls


@pytest.mark.parametrize("power", [0.7, 1.0, 1.6, 3.0])
def test_match_strength_reaches_the_target(power):
    measure, calls = _power_law(0.4, power)
    match = match_strength(measure, 0.03, rtol=0.05, max_evals=12)
    assert match.matched
    assert abs(0.4 * match.alpha**power / 0.03 - 1) <= 0.05
    assert match.result == match.alpha and match.evaluations == len(calls)


def test_match_strength_is_quick_for_nearly_linear_edits():
    measure, calls = _power_law(0.25, 1.1)
    assert match_strength(measure, 0.03, rtol=0.1).matched
    assert len(calls) <= 3


def test_match_strength_reports_an_unreachable_target():
    """A saturating edit never gets there: the closest measurement comes back, marked unmatched."""
    match = match_strength(lambda a: (0.01 * math.tanh(a), None), 0.03, bounds=(1e-3, 4.0), max_evals=20)
    assert not match.matched
    assert match.alpha == pytest.approx(4.0)


def test_match_strength_rejects_a_non_positive_target():
    with pytest.raises(ValueError, match="positive"):
        match_strength(lambda a: (a, None), 0.0)


def test_factor_purity_is_the_region_share_of_squared_factor_change():
    changes = pd.DataFrame({"eye_openness": [2.0, 0.0, 1.0, 0.0], "iris_color": [0.0, 0.0, 0.0, 0.0],
                            "mouth_curvature": [0.0, 3.0, 1.0, 0.0], "lighting": [0.0, 0.0, 1.0, 0.0]})
    def purity(region):
        return factor_purity(changes, region_factors(region))

    np.testing.assert_allclose(purity("eyes"), [1.0, 0.0, 1 / 3, np.nan])
    np.testing.assert_allclose(purity("mouth"), [0.0, 1.0, 1 / 3, np.nan])
    np.testing.assert_allclose(purity("left_eye"), purity("eyes"))
    np.testing.assert_allclose(purity("eyes+mouth"), [0.0, 0.0, 1 / 3, np.nan])  # a joint region: global factors
    assert np.isnan(purity("somewhere")).all()
    assert set(region_factors("eyes")) == {"eye_openness", "iris_color"}
    assert "lighting" in region_factors("eyes+mouth") and "skin_tone" not in region_factors("eyes+mouth")


def test_bootstrap_interval_resamples_images_not_rows():
    values = np.arange(100.0)
    # Two images of 50 rows each: a resample holds image a twice, b twice, or both.
    median, low, high = bootstrap_median(values, np.repeat(["a", "b"], 50), n_boot=400)
    assert (median, low, high) == (49.5, 24.5, 74.5)
    # 100 independent images pin the median down far more tightly.
    median, low, high = bootstrap_median(values, np.arange(100), n_boot=400)
    assert low < median < high and high - low < 30
    assert all(math.isnan(v) for v in bootstrap_median([np.nan], ["a"]))
    # One image: its median, and no interval (every resample is that image).
    median, low, high = bootstrap_median([1.0, 2.0, 4.0], ["a"] * 3)
    assert median == 2.0 and math.isnan(low) and math.isnan(high)


@pytest.fixture(scope="module")
def setting(tiny_model):
    regions = [box("eyes", 4, 2, 8, 14, 16), box("mouth", 10, 4, 14, 12, 16)]
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    source = prepare_images(tiny_model, images[:1], ["s0"], "source", num_steps=4)
    heldout = prepare_images(tiny_model, images[1:], ["h0", "h1"], "transfer", num_steps=4)
    return regions, source, heldout


@pytest.mark.parametrize("space", ["h", "x"])
def test_alpha_zero_reproduces_the_reference(tiny_model, setting, space):
    _, _, heldout = setting
    dim = math.prod(h_shape(tiny_model.unet)) if space == "h" else 3 * 16 * 16
    d = Direction("d", "random", None, space, torch.randn(dim), 500)
    edited = apply_direction(tiny_model, d, heldout, [0, 1], [0.0, 0.5])
    assert edited.shape == (2, 2, 3, 16, 16)
    torch.testing.assert_close(edited[:, 0], heldout.reference, atol=1e-5, rtol=0)
    assert (edited[:, 1] - heldout.reference).abs().max() > 1e-3


def test_region_free_directions_are_scored_on_every_region(setting):
    regions, _, heldout = setting
    scorer = Scorer({r.name: r for r in regions})
    edited = heldout.reference[:, None] + 0.01
    match = Match(0.2, 0.03, True, 3)
    free = score_edits(Direction("g", "global", None, "h", torch.ones(4), 500), heldout, [0, 1], edited, [0.2],
                       scorer, match)
    tied = score_edits(Direction("e", "masked", "eyes", "h", torch.ones(4), 500), heldout, [0, 1], edited, [0.2],
                       scorer, match)
    assert sorted(free["region"].unique()) == ["eyes", "mouth"] and len(free) == 4
    assert list(tied["region"].unique()) == ["eyes"] and len(tied) == 2
    # A uniform change puts each region's pixel share of the energy inside it.
    np.testing.assert_allclose(tied["locality"], regions[0].fraction, rtol=1e-4)


def test_a_direction_with_an_alpha_hint_is_matched_from_it(tiny_model, setting):
    regions, source, _ = setting
    scorer = Scorer({r.name: r for r in regions}, target=0.02)
    vector = torch.randn(math.prod(h_shape(tiny_model.unet)), generator=torch.Generator().manual_seed(3))
    searched = match_direction(tiny_model, Direction("d", "random", None, "h", vector, 500), source, [0], scorer)
    assert searched.matched and searched.evaluations > 1
    hinted = match_direction(tiny_model, Direction("d", "random", None, "h", vector, 500,
                                                   info={ALPHA_HINT: searched.alpha}), source, [0], scorer)
    assert hinted.evaluations == 1 and hinted.alpha == pytest.approx(searched.alpha)


@pytest.mark.parametrize("measured", ["metrics only", "with LPIPS and the probe"])
def test_scored_rows_have_exactly_the_schemas_columns(setting, measured):
    """What scoring writes is what ``schema`` documents and every reader reads by name."""
    regions, _, heldout = setting
    full = measured != "metrics only"
    probe = FactorProbe(FACTORS, [0.0] * len(FACTORS), [1.0] * len(FACTORS), channels=(4,), feature_dim=8, size=16)
    scorer = Scorer({r.name: r for r in regions}, random_backbone_lpips() if full else None, probe if full else None)
    rows = score_edits(Direction("g", "global", None, "h", torch.ones(4), 500), heldout, [0, 1],
                       heldout.reference[:, None] + 0.01, [0.2], scorer, Match(0.2, 0.03, True, 3))
    col.check_rows(rows)
    expected = {*col.IDENTITY, *col.IMAGE_METRICS}
    if full:
        expected |= {col.RANDOM_LPIPS, col.RANDOM_LPIPS_OUTSIDE, *col.PROBE_METRICS, *map(col.factor_column, FACTORS)}
    assert set(rows.columns) == expected
    assert set(col.factor_columns(rows.columns)) == ({f"factor_{f}" for f in FACTORS} if full else set())
    with pytest.raises(ValueError, match=r"missing columns \['locality'\]; unknown columns \['locality_share'\]"):
        col.check_rows(rows.rename(columns={"locality": "locality_share"}))
    with pytest.raises(ValueError, match="image_set holds"):
        col.check_rows(rows.assign(image_set="heldout"))
    if full:
        with pytest.raises(ValueError, match="probe's columns"):
            col.check_rows(rows.drop(columns="global_purity"))
    assert all(c.meaning for c in col.ROW_COLUMNS.values())


def test_the_sweep_takes_its_plus_minus_one_columns_from_the_matched_edits(tiny_model, setting, tmp_path):
    regions, _, heldout = setting
    scorer = Scorer({r.name: r for r in regions})
    d = Direction("d", "random", "eyes", "h", torch.randn(math.prod(h_shape(tiny_model.unet))), 500)
    rows = score_direction(tiny_model, d, heldout, [0, 1], Match(0.3, 0.03, True, 1), scorer, sweep=1,
                           strip=tmp_path / "d.png")
    sweep, matched = rows[rows["kind"] == "sweep"], rows[rows["kind"] == "matched"]
    assert sorted(sweep["alpha_mult"]) == sorted(SWEEP) and set(sweep["image"]) == {"h0"}
    assert len(matched) == 4 and (tmp_path / "d.png").is_file()
    for sign in (1.0, -1.0):  # the same edit, not a second one
        pair = [frame.loc[(frame["image"] == "h0") & (frame["alpha_mult"] == sign), "locality"].item()
                for frame in (sweep, matched)]
        assert pair[0] == pair[1]
    assert sweep["locality"].nunique() == len(SWEEP)


def test_method_directions_cover_every_method(tiny_model, setting):
    regions, source, _ = setting
    found, latent = method_directions(tiny_model, None, regions, "s0", k=3, num_steps=4, x_T=source.x_T)
    methods = {d.method for d in found}
    # a random model may share no direction across regions; region variation is found over many images at once
    assert methods >= set(METHODS) - {"jive_joint", "region_variation", "region_contrast", "joint_variation"}
    for d in found:
        assert d.vector.norm() == pytest.approx(1.0, abs=1e-5)
        assert (d.region is None) == (d.method in REGION_FREE)
        assert d.space == ("x" if d.method == "loco_xspace" else "h")
    assert latent.t == found[0].t


def test_small_comparison_end_to_end(tiny_model, setting, tmp_path):
    regions, source, heldout = setting
    scorer = Scorer({r.name: r for r in regions}, random_backbone_lpips(), target=0.02)
    rows, directions = compare(tiny_model, source, heldout, scorer, k=3, out_dir=tmp_path, strip_images=1)
    col.check_rows(rows)
    matched = rows[rows["kind"] == "matched"]
    assert set(matched["image_set"]) == {"source", "transfer"}
    assert set(matched["method"]) == {d.method for d in directions}
    # Strength matching holds the source edits at the target change (mean of the two signs).
    src = matched[(matched["image_set"] == "source") & matched["matched"]].drop_duplicates(["direction", "alpha"])
    per_direction = src.groupby("direction")["total_change"].mean()
    assert len(per_direction) > 0
    np.testing.assert_allclose(per_direction, 0.02, rtol=0.1)
    assert (rows.loc[rows["kind"] == "sweep", "alpha_mult"].abs().max()) == pytest.approx(2.0)
    assert len(list((tmp_path / STAGED_STRIPS_DIR).glob("*.png"))) == len(directions)  # staged until saved

    result = save_results(tmp_path, rows, {"model_source": "tiny", "lpips_note": "unavailable: test"}, METHODS)
    assert len(list((tmp_path / STRIPS_DIR).glob("*.png"))) == len(directions)
    assert pd.read_parquet(tmp_path / METRICS_FILE).shape == rows.shape
    on_disk = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert on_disk["methods"] == result["methods"]
    assert set(on_disk["methods"]) == set(METHODS)  # a method without directions is listed, not dropped
    for name, m in on_disk["methods"].items():
        for key in ("locality_median", "outside_psnr_median", "outside_ssim_median", "lpips_outside_median",
                    "transfer_locality_median", "factor_purity_median"):
            assert key in m, (name, key)
        assert m["lpips_outside_median"] is None  # a random backbone is never reported as LPIPS
        found = {d.method for d in directions}
        assert m["n_directions"] == sum(d.method == name for d in directions)
        assert (m["locality_median"] is None) == (name not in found)
        assert m["locality_median"] is None or 0 <= m["locality_median"] <= 1
    assert not list(tmp_path.glob("*.partial"))


def test_evaluation_flow_on_a_mined_run(prefect_api, tmp_path):
    """Mine a tiny run, then evaluate its catalogue and the baselines through the Prefect flow."""
    from flows.evaluate import evaluate_directions
    from flows.mine import mine_directions
    from localedit.bundled.samples import write_samples

    torch.set_num_threads(1)
    model_dir = tmp_path / "model"
    tiny_unet(size=32).save_pretrained(model_dir)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(model_dir)
    samples = tmp_path / "samples"
    write_samples(samples, n_mine=2, n_heldout=2)
    run = tmp_path / "run"
    mine_directions(str(run), model=str(model_dir), samples=2, regions="eyes,mouth", k=3, num_steps=4, progress=False)

    result = evaluate_directions(str(run), heldout=2, sources=1, baselines=True, strip_images=1, samples=str(samples))
    rows = pd.read_parquet(run / METRICS_FILE)
    # The run mined with complements (the default): its catalogue supplies jive_complement, region
    # contrast (and any joint) directions (too few images for region variation), and the paper's
    # per-image JIVE joins the baselines.
    assert {"global", "masked", "loco_xspace", "random", "jive_individual"} <= set(rows["method"])
    from_catalogue = rows["direction"].str.startswith("catalogue:")
    assert from_catalogue.any()
    assert set(rows.loc[from_catalogue, "method"]) <= {"jive_complement", "jive_joint", "region_contrast"}
    assert {"jive_complement", "region_contrast"} <= set(rows.loc[from_catalogue, "method"])
    transfer = rows[(rows["image_set"] == "transfer") & (rows["kind"] == "matched")]
    assert set(transfer["image"]) == {"heldout_000.png", "heldout_001.png"}
    assert (run / "report.html").is_file() and result.report == str(run / "report.html")
    assert set(result.methods) == set(METHODS)


def test_each_flow_thread_edits_its_own_model(tiny_model, monkeypatch):
    """Edits hook the U-Net's forward pass; a model shared by the flow's threads would mix their edits."""
    import tasks.evaluate as te

    monkeypatch.setattr(te, "cached_model", lambda source, fingerprint: tiny_model)
    plan = SimpleNamespace(model_source="tiny", model_fingerprint=tiny_model.fingerprint)
    seen = []
    for _ in range(2):
        thread = threading.Thread(target=lambda: seen.append((te._model(plan), te._model(plan))))
        thread.start()
        thread.join()
    (a1, a2), (b1, b2) = seen
    assert a1 is a2 and b1 is b2  # one copy per thread, reused
    assert a1.unet is not b1.unet and a1.unet is not tiny_model.unet
    assert a1.fingerprint == tiny_model.fingerprint
