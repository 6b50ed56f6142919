"""The mining flow end to end on a tiny model: layout, resume, kill -9, Dask, a deployment, bad input.

A real ``prefect server`` runs on 127.0.0.1 for the module (its own PREFECT_HOME), because
Dask workers and the deployment's worker are separate processes that must report to it; the
reference run itself uses ``prefect_test_harness``. Nothing leaves the loopback interface.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from PIL import Image
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.local_server import loopback_server
from flows.mine import mine_directions, run_mining
from localedit.cli import _print_mining, main
from localedit.core.mining import latent_at
from localedit.core.models import from_unet, load_model, save_model
from localedit.core.subspace import principal_angles
from localedit.store import catalogue
from localedit.store.runs import STORE_NAME, RunStore
from tests.conftest import tiny_unet

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS = dict(samples=6, k=3, num_steps=10, regions="eyes,mouth", joint_rank=1, min_support=1)
CLI_SETTINGS = ["--samples", "6", "--k", "3", "--num-steps", "10", "--regions", "eyes,mouth", "--joint-rank", "1",
                "--min-support", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_model(from_unet(tiny_unet(seed=0)), root / "tiny")
    save_model(from_unet(tiny_unet(seed=1)), root / "other")
    return {"tiny": str(root / "tiny"), "other": str(root / "other")}


@pytest.fixture(scope="module")
def mined(models, tmp_path_factory):
    """The reference run: in process, under prefect_test_harness."""
    out = tmp_path_factory.mktemp("mined") / "run"
    with prefect_test_harness():
        summary = mine_directions(out=str(out), model=models["tiny"], progress=False, **SETTINGS)
    return out, summary


@pytest.fixture(scope="module")
def server(tmp_path_factory, mined):
    """`prefect server start` on loopback; PREFECT_API_URL points this process and its children at it.

    It starts after the reference run (``mined``), so the test harness never nests inside it.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    with loopback_server(home, timeout=180, extra_env={"OMP_NUM_THREADS": "1"}) as url:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url


def _bases(run_dir) -> dict[str, np.ndarray]:
    group = RunStore(run_dir).group
    return {name: group[name][:] for name in ("subspace_basis", "subspace_singular_values", "joint_basis",
                                              "individual_basis", "x_t")}


def _assert_same_catalogue(a, b):
    cat_a, cat_b = catalogue.open(a), catalogue.open(b)
    keys = ["id", "region", "kind", "rank", "support"]
    pd.testing.assert_frame_equal(cat_a.frame[keys], cat_b.frame[keys])
    np.testing.assert_allclose(cat_a.frame[["singular_value", "consistency"]], cat_b.frame[["singular_value", "consistency"]],
                               atol=1e-5)
    for direction in cat_a.frame["id"]:
        torch.testing.assert_close(cat_a.vector(direction), cat_b.vector(direction), atol=1e-5, rtol=0)


def test_end_to_end_layout_attributes_and_catalogue(mined, models):
    run_dir, summary = mined
    # Two regions and, by default, their two complements: 4 subspaces per image.
    assert {stage: (c.computed, c.skipped) for stage, c in summary.tasks.items()} == {
        "latent": (6, 0), "subspace": (24, 0), "split": (6, 0)}
    assert summary.task_seconds == sum(c.seconds for c in summary.tasks.values()) > 0
    store = RunStore(run_dir)
    assert store.progress() == {"latent": (6, 6), "subspace": (24, 24), "split": (6, 6)}
    attrs = dict(store.group.attrs)
    assert attrs["model_fingerprint"] == load_model(models["tiny"]).fingerprint
    assert attrs["t"] == 500 and attrs["k"] == 3 and attrs["num_steps"] == 10 and attrs["regions"] == ["eyes", "mouth"]
    assert attrs["images"] == [f"sample-{i:04d}" for i in range(6)] and attrs["complements"] is True
    assert store.group["block"][:].tolist() == ["eyes", "mouth", "not_eyes", "not_mouth"]
    ds = xr.open_zarr(store.path, consolidated=False)
    assert ds["subspace_basis"].dims == ("image", "block", "h", "component")
    assert ds["individual_basis"].dims == ("image", "region", "h", "component")
    assert ds.sizes == {"image": 6, "region": 2, "block": 4, "channel": 3, "y": 16, "x": 16, "h": 1024, "component": 3,
                        "direction": len(catalogue.open(run_dir))}
    images = ds["images"].values
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0  # the sampled images were decoded
    # The latents were computed as one batch; each is the one its image gets alone, up to the rounding of
    # batched convolutions (which this random model's steps amplify to ~2e-5 in x_T, ~2e-4 in x_t; another
    # image's latent would differ by O(1)).
    model = load_model(models["tiny"])
    for i in (0, 5):
        alone = latent_at(model, store.image(i), 500, 10)
        torch.testing.assert_close(store.x_T(i), alone.x_T[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(store.x_t(i), alone.x_t[0], atol=5e-3, rtol=0)
    cat = catalogue.open(run_dir)
    assert Path(summary.catalogue) == run_dir / catalogue.CATALOGUE_NAME and not summary.catalogue_kept
    assert set(cat.frame["kind"]) == {"individual", "joint"} and {"eyes", "mouth"} <= set(cat.frame["region"])
    # Within one family a region's directions are orthonormal (families are mined independently).
    for _, group in cat.frame.groupby(["region", "kind", "method"]):
        V = torch.stack([cat.vector(i) for i in group["id"]], dim=1)
        torch.testing.assert_close(V.T @ V, torch.eye(V.shape[1]), atol=1e-5, rtol=0)


def test_rerun_recomputes_nothing_and_keeps_the_catalogue_unless_its_settings_change(mined, models, server,
                                                                                     tmp_path, capsys):
    run_dir, _ = mined
    chunks = sorted((run_dir / STORE_NAME / "subspace_basis").rglob("*"))
    files = [*chunks, run_dir / catalogue.CATALOGUE_NAME]
    stamps = [p.stat().st_mtime_ns for p in files]
    before = catalogue.open(run_dir).frame
    summary = mine_directions(out=str(run_dir), model=models["tiny"], progress=False, **SETTINGS)
    assert {stage: c.computed for stage, c in summary.tasks.items()} == {"latent": 0, "subspace": 0, "split": 0}
    assert summary.tasks["subspace"].skipped == 24
    # Found by a new user: resuming a finished run rebuilt its catalogue (27 s of a 39 s command); it is kept.
    assert summary.catalogue_kept and [p.stat().st_mtime_ns for p in files] == stamps
    _print_mining(summary)
    assert "catalogue kept (up to date)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(catalogue.open(run_dir).frame, before)
    # Other catalogue settings on a finished run (a copy: the module's run stays as it is) rebuild it with them.
    copy = shutil.copytree(run_dir, tmp_path / "run")
    summary = mine_directions(out=str(copy), model=models["tiny"], progress=False, **{**SETTINGS, "min_support": 2})
    assert sum(c.computed for c in summary.tasks.values()) == 0 and not summary.catalogue_kept
    rebuilt = catalogue.open(copy)
    assert rebuilt.attrs["min_support"] == 2 and (rebuilt.frame["created_at"] > before["created_at"].max()).all()


def test_resume_computes_only_the_blocks_not_yet_marked(mined, models, server, tmp_path):
    """A store whose images have some blocks marked (a run of the per-block pipeline, killed) resumes block by block."""
    run_dir = tmp_path / "partial"
    shutil.copytree(mined[0], run_dir)
    store = RunStore(run_dir)
    marks = store.group["done_subspace"]
    marks[0, 2] = np.nan  # image 0 lacks not_eyes; image 3 lacks everything
    marks[3, :] = np.nan
    basis = store.group["subspace_basis"]
    basis[0, 2] = 0
    basis[3] = 0
    summary = mine_directions(out=str(run_dir), model=models["tiny"], progress=False, **SETTINGS)
    assert (summary.tasks["subspace"].computed, summary.tasks["subspace"].skipped) == (5, 19)
    resumed, reference = _bases(run_dir), _bases(mined[0])
    # Equal up to rounding: a block computed alone goes through other matmul shapes than beside three more (on
    # one machine 1.7e-6 in a vector whose entries are ~1e-2); each vector's sign is fixed, so none flips.
    for name in reference:
        np.testing.assert_allclose(resumed[name], reference[name], atol=1e-5, err_msg=name)


def test_kill_9_mid_run_resumes_to_identical_bases(mined, models, server, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([BIN / "localedit", "mine", "--model", models["tiny"], *CLI_SETTINGS, "--out", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if (run_dir / STORE_NAME / "zarr.json").exists() and RunStore(run_dir).progress()["subspace"][0] >= 2:
                break
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have finished first; the assert below says so
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    store = RunStore(run_dir)
    progress = store.progress()
    assert 2 <= progress["subspace"][0] < 24, f"the run was not caught mid-way: {progress}"
    assert progress["subspace"][0] % 4 == 0, "an image's blocks are marked together"
    assert not (run_dir / catalogue.CATALOGUE_NAME).exists()
    for i in range(6):  # every chunk a mark vouches for is whole
        for region in ("eyes", "mouth", "not_eyes", "not_mouth"):
            if store.subspace_done(i, region):
                basis, _ = store.subspace(i, region)
                torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-4, rtol=0)
    summary = run_mining(out=str(run_dir), model=models["tiny"], progress=False, **SETTINGS)
    assert summary.tasks["subspace"].skipped == progress["subspace"][0]
    assert summary.tasks["subspace"].computed == 24 - progress["subspace"][0]
    assert not list((run_dir / STORE_NAME).rglob("*.partial"))
    resumed, reference = _bases(run_dir), _bases(mined[0])
    for name in reference:
        np.testing.assert_allclose(resumed[name], reference[name], atol=1e-6, err_msg=name)
    _assert_same_catalogue(run_dir, mined[0])


def test_dask_on_a_local_cluster_matches_in_process(mined, models, server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # gpu=True: model-heavy tasks ask for a "GPU" worker resource, which this cluster's workers offer.
    summary = run_mining(runner="dask", gpu=True, out=str(tmp_path / "dask"), model=models["tiny"],
                         progress=False, **SETTINGS)
    assert summary.tasks["subspace"].computed == 24
    _assert_same_catalogue(tmp_path / "dask", mined[0])
    with get_client(sync_client=True) as client:  # the workers reported their task runs to the server
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(summary.flow_run_id)])))
    names = [r.name for r in runs if r.state.is_completed()]
    assert sum(n.startswith("image-") for n in names) == 6
    assert sorted(n for n in names if n.startswith("invert-")) == ["invert-0:4", "invert-4:6"]  # LATENT_BATCH is 4


def _prefect(*args: str) -> str:
    result = subprocess.run([BIN / "prefect", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_model_heavy_tasks_carry_the_gpu_tag_only_where_the_server_limits_it(server):
    """An untagged task run asks the server nothing before it starts; a limit on the tag still applies."""
    from prefect.client.orchestration import get_client

    from tasks.mine import invert_images, subspaces_and_split
    from tasks.runtime import GPU_TAG, gpu_tag_where_limited

    assert {GPU_TAG} <= invert_images.tags and {GPU_TAG} <= subspaces_and_split.tags
    untagged = gpu_tag_where_limited(invert_images, subspaces_and_split)
    assert [t.tags for t in untagged] == [set(), set()] and [t.fn for t in untagged] == [invert_images.fn,
                                                                                        subspaces_and_split.fn]
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(GPU_TAG, 1)
        try:
            assert gpu_tag_where_limited(invert_images, subspaces_and_split) == (invert_images, subspaces_and_split)
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)


def test_deployment_runs_on_a_process_worker(models, server, tmp_path):
    from prefect.client.orchestration import get_client

    _prefect("work-pool", "create", "localedit-gpu", "--type", "process")
    _prefect("work-pool", "set-concurrency-limit", "localedit-gpu", "1")
    _prefect("concurrency-limit", "create", "gpu", "2")
    _prefect("deploy", "--no-prompt", "--prefect-file", "deployment.yaml", "--all")
    out = tmp_path / "deployed"
    started = _prefect("deployment", "run", "mine-directions/mine-on-demand", "--param", f"out={out}",
                       "--param", f"model={models['tiny']}", "--param", "samples=2", "--param", "k=3",
                       "--param", "num_steps=10", "--param", "min_support=1")
    flow_run_id = UUID(re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1))
    _prefect("worker", "start", "--pool", "localedit-gpu", "--run-once")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        weekly = client.read_deployment_by_name("mine-directions/mine-weekly")
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.state.is_completed(), flow_run.state
    # The pool's "gpu" limit holds: the model-heavy task runs were tagged, so each took one of its slots.
    heavy = [r for r in task_runs if r.name.startswith(("invert-", "image-"))]
    assert len(heavy) == 3 and all("gpu" in r.tags for r in heavy), [(r.name, r.tags) for r in task_runs]
    assert weekly.schedules and weekly.schedules[0].schedule.cron == "0 3 * * 1"
    cat = catalogue.open(out)
    assert len(cat) > 0 and cat.attrs["images"] == ["sample-0000", "sample-0001"]


def _png(path: Path, size: int) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("unreadable", "cannot read image"),
    ("wrong_size", r"is 32x32 pixels; expected 16x16"),
    ("unknown_region", "unknown region preset"),
    ("bad_rank", r"joint_rank=4 must be in \[0, min k_a = 3\]"),
    ("unknown_precision", "unknown precision 'fp8'; use one of fp32, bf16, fp16"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(case, message, models, server, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a.png", 16)
    regions, joint_rank, precision = "eyes,mouth", None, "fp32"
    if case == "unreadable":
        (folder / "b.png").write_bytes(b"not a png at all")
    elif case == "wrong_size":
        _png(folder / "b.png", 32)
    elif case == "unknown_region":
        regions = "eyes,nose"
    elif case == "bad_rank":
        joint_rank = 4
    else:
        precision = "fp8"
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        mine_directions(out=str(out), model=models["tiny"], images=str(folder), regions=regions, k=3, num_steps=10,
                        joint_rank=joint_rank, precision=precision, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_resuming_with_other_settings_is_refused(mined, models, server):
    run_dir, summary = mined
    with pytest.raises(ValueError, match="other settings.*k: 3 != 4"):
        mine_directions(out=str(run_dir), model=models["tiny"], progress=False, **(SETTINGS | {"k": 4}))
    assert RunStore(run_dir).run_id == summary.run_id


def test_a_bf16_run_is_near_the_fp32_run_and_resumes_only_as_bf16(mined, models, server, tmp_path):
    """precision="bf16" autocasts the Jacobian products: every subspace moves, by far less than a degree-scale
    bound (bundled model, k = 8: <= 0.9 degrees; this random tiny model's k = 3 subspaces are less separated)."""
    run_dir = tmp_path / "bf16"
    mine_directions(out=str(run_dir), model=models["tiny"], progress=False, precision="bf16", **SETTINGS)
    store, reference = RunStore(run_dir), RunStore(mined[0])
    assert store.config.precision == "bf16" and reference.config.precision == "fp32"
    assert catalogue.open(run_dir).attrs["precision"] == "bf16"
    torch.testing.assert_close(store.x_t(0), reference.x_t(0), atol=0, rtol=0)  # only the products differ
    angles = torch.stack([principal_angles(store.subspace(i, block)[0], reference.subspace(i, block)[0]).max()
                          for i in range(6) for block in store.config.blocks])
    assert 1e-3 < angles.max() < 5, angles
    with pytest.raises(ValueError, match="other settings.*precision: 'bf16' != 'fp32'"):
        mine_directions(out=str(run_dir), model=models["tiny"], progress=False, **SETTINGS)


def test_catalogue_and_edit_commands(mined, models, tmp_path, capsys):
    run_dir, _ = mined
    assert main(["catalogue", "show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "joint/0" in shown and "eyes/individual/0" in shown and "edit_locality" in shown
    joint = [int(line.split()[0][len("joint/"):]) for line in shown.splitlines()
             if line.startswith("joint/") and line.split()[0].count("/") == 1]
    assert joint == sorted(joint), joint  # by rank, not in the order the catalogue ranked them by reading
    assert main(["catalogue", "query", str(run_dir), "kind == 'joint'"]) == 0
    queried = capsys.readouterr().out
    assert "joint/0" in queried and "eyes/individual" not in queried
    for query in ("nonsense == 1", "region = 'eyes'"):  # a new user's typo: an assignment
        assert main(["catalogue", "query", str(run_dir), query]) == 2
        assert "bad query" in capsys.readouterr().err
    for query in ("rank", "region"):  # a second new user's: pandas indexed with these instead of refusing them
        assert main(["catalogue", "query", str(run_dir), query]) == 2
        assert "the query must be a condition" in capsys.readouterr().err

    image = _png(tmp_path / "face.png", 16)
    strip = tmp_path / "strip.png"
    assert main(["edit", "--catalogue", str(run_dir), "--direction", "eyes/individual/0", "--image", str(image),
                 "--alphas=-0.2,0,0.2", "--out", str(strip)]) == 0
    with Image.open(strip) as png:
        assert png.width > 3 * 16 * 4
    refused = tmp_path / "refused.png"
    assert main(["edit", "--catalogue", str(run_dir), "--direction", "eyes/individual/0", "--image", str(image),
                 "--model", models["other"], "--out", str(refused)]) == 2
    assert "do not apply" in capsys.readouterr().err and not refused.exists()
    # An unknown id is named, with the catalogue's ids, before the model loads; a huge alpha is warned about.
    assert main(["edit", "--catalogue", str(run_dir), "--direction", "eyes/individual/99", "--image", str(image),
                 "--out", str(refused)]) == 2
    assert capsys.readouterr().err.startswith("localedit: error: no direction 'eyes/individual/99' in ")
    with pytest.warns(UserWarning, match="expect noise"):
        assert main(["edit", "--catalogue", str(run_dir), "--direction", "eyes/individual/0", "--image", str(image),
                     "--alphas", "1e6", "--out", str(refused)]) == 0


def test_the_console_shows_a_bar_and_the_summary_while_prefect_keeps_the_records(mined, models, server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, LogFilter, LogFilterFlowRunId

    # A finished run (a copy) with another catalogue setting: the mining is resumed, the catalogue rebuilt.
    run_dir = shutil.copytree(mined[0], tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"}  # the CLI's default
    started = datetime.now(timezone.utc)
    done = subprocess.run([BIN / "localedit", "mine", "--model", models["tiny"], *CLI_SETTINGS, "--min-support", "2",
                           "--out", str(run_dir)],
                          capture_output=True, env=env, timeout=600)  # bytes: text mode would turn a bar's \r into \n
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    console = [line for line in (stdout + stderr).split("\n") if line]  # what a terminal shows: the bar is one line
    assert "Finished in state" not in stderr and "INFO" not in stderr
    assert "mining: 100%" in stderr and "catalogue: 100%" in stderr and len(console) <= 5, console
    assert re.search(r"mining: 100%.*(task/s|s/task)", stderr), stderr  # it counts tasks, not images
    with get_client(sync_client=True) as client:
        since = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started))
        ours = [r for r in client.read_flow_runs(flow_run_filter=since) if r.parameters.get("out") == str(run_dir)]
        assert len(ours) == 1 and ours[0].state.is_completed(), ours
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[ours[0].id])))
    finished = [log for log in logs if "Finished in state Completed()" in log.message]
    # every run's record is on the server: the flow, its preparation, the inversions of the 6 images (batches
    # of up to 4), one subspaces-and-split task per image and the catalogue build
    assert len(finished) == 1 + 1 + 2 + 6 + 1, [log.message for log in finished]
