"""The pipeline benchmark's bookkeeping: which runs its ratios compare, and how a runner is spelled."""

import pytest

from benchmarks.pipeline import _union_seconds, headline, ratios, runner_arguments, stage_seconds


def row(version: str, runner: str, images: int, rate: float, utilisation: float = 0.5) -> dict:
    return {"version": version, "runner": runner, "images": images, "pairs_per_minute": rate,
            "core_utilisation": utilisation, "machine_busy": 1.0}


def test_ratios_compare_runs_of_the_same_image_count_against_new_in_process():
    rows = [row("new", "local", 6, 20.0), row("old", "local", 6, 10.0), row("new", "dask:1", 6, 25.0),
            row("new", "dask:2", 6, 15.0), row("new", "local", 16, 40.0), row("new", "dask:1", 16, 20.0)]
    assert ratios(rows) == {6: {"dask_1_over_inprocess": 1.25, "dask_2_over_inprocess": 0.75, "new_over_old": 2.0},
                            16: {"dask_1_over_inprocess": 0.5}}


def test_headline_takes_the_largest_image_count_and_the_default_dask_run_when_there_is_one():
    rows = [row("new", "local", 6, 20.0, 0.9), row("old", "local", 6, 10.0, 0.4), row("new", "dask:2", 6, 30.0),
            row("new", "dask", 6, 16.0)]
    figures = headline(rows)
    assert figures["core_utilisation"] == 0.9 and figures["old_core_utilisation"] == 0.4
    assert figures["dask_runner"] == "dask" and figures["dask_over_inprocess"] == pytest.approx(0.8)
    assert figures["new_over_old"] == 2.0
    best = headline([r for r in rows if r["runner"] != "dask"] + [row("new", "local", 2, 1.0)])
    assert best["dask_runner"] == "dask:2" and best["dask_over_inprocess"] == 1.5  # 6 images, not 2


def test_runner_spelling_and_interval_union():
    assert runner_arguments("local") == {"runner": "local"}
    assert runner_arguments("dask") == {"runner": "dask"}
    assert runner_arguments("dask:2") == {"runner": "dask", "workers": 2}
    assert _union_seconds([(0, 2), (1, 3), (5, 6)]) == 4


def test_mining_stages_leave_out_the_catalogue_build_and_get_their_own_ratios():
    runs = [("invert-0:8", 10.0, 20.0), ("subspaces-0", 20.0, 40.0), ("split-0", 40.0, 41.0),
            ("subspaces-1", 25.0, 45.0), ("build-catalogue-abc", 46.0, 106.0)]
    assert stage_seconds(runs) == (35.0, 60.0)
    rows = [dict(row("new", "local", 6, 20.0), mining_pairs_per_minute=30.0),
            dict(row("old", "local", 6, 10.0), mining_pairs_per_minute=10.0),
            dict(row("new", "dask", 6, 10.0), mining_pairs_per_minute=None)]  # no stage times: left out
    assert ratios(rows) == {6: {"dask_over_inprocess": 0.5, "new_over_old": 2.0, "new_over_old_mining": 3.0}}
    assert headline(rows)["new_over_old_mining"] == 3.0


def test_repeated_runs_are_compared_by_their_medians_and_one_task_per_image_counts_as_mining():
    rows = [row("new", "local", 6, rate) for rate in (20.0, 30.0, 22.0)] + \
        [row("new", "dask", 6, rate) for rate in (11.0, 33.0, 24.0)]
    assert ratios(rows) == {6: {"dask_over_inprocess": pytest.approx(24.0 / 22.0)}}
    assert headline(rows)["dask_over_inprocess"] == pytest.approx(24.0 / 22.0)
    assert stage_seconds([("invert-0:4", 0.0, 5.0), ("image-3", 5.0, 9.0), ("build-catalogue-x", 9.0, 12.0)]) == (9.0, 3.0)


def test_the_accuracy_figure_is_the_largest_principal_angle_over_images_and_blocks(tmp_path):
    import math

    import numpy as np
    import zarr

    from benchmarks.pipeline import largest_angle_deg
    from localedit.store.runs import STORE_NAME

    d, k, planted = 12, 3, 0.7  # degrees
    rotated = np.zeros((2, 2, d, k), dtype=np.float32)  # (image, block, h, component)
    rotated[..., [0, 1, 2], [0, 1, 2]] = 1.0
    reference = rotated.copy()
    c, s = math.cos(math.radians(planted)), math.sin(math.radians(planted))
    rotated[1, 0, :, 1] = 0.0
    rotated[1, 0, 1, 1], rotated[1, 0, 5, 1] = c, s  # one image and block off by the planted angle
    reference[0, 1, :, 2] = 0.0  # a block where fewer than k directions were found: padding is left out
    for name, basis in (("run", rotated), ("reference", reference)):
        group = zarr.open_group(str(tmp_path / name / STORE_NAME), mode="w")
        group.create_array("subspace_basis", data=basis)
    assert largest_angle_deg(tmp_path / "run", tmp_path / "reference") == pytest.approx(planted, abs=1e-4)
    assert largest_angle_deg(tmp_path / "reference", tmp_path / "reference") == 0.0
    zarr.open_group(str(tmp_path / "other" / STORE_NAME), mode="w").create_array("subspace_basis",
                                                                                 data=reference[:1])
    with pytest.raises(ValueError, match="subspaces of shape"):
        largest_angle_deg(tmp_path / "other", tmp_path / "reference")
