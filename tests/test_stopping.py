"""A person can stop a run (issue 15, kind 5): a signal ends `localedit mine` within seconds, nothing it
started outlives it (not even after kill -9), and a rerun resumes to the result of an uninterrupted run.

The command runs as a separate process with no PREFECT_API_URL, as a user runs it, so it starts its own
temporary Prefect server. Its second image's subspace task is made to hang (as a minutes-long task on a
256-px model does): before the fix, SIGTERM left the process waiting for it.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from localedit.core.models import from_unet, save_model
from localedit.store import catalogue
from localedit.store.runs import RunStore
from localedit.utils.console import stopped_line
from tests.conftest import tiny_unet

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["--samples", "2", "--k", "2", "--num-steps", "10", "--regions", "eyes,mouth", "--joint-rank", "1",
            "--min-support", "1"]
HANGING = """
import os, sys, time
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # as the CLI sets it, before Prefect loads
import tasks.mine
real = tasks.mine.region_subspaces
calls = []
def hanging(model, latent, regions, k, **options):
    calls.append(1)
    if len(calls) > 1:
        time.sleep(3600)
    return real(model, latent, regions, k, **options)
tasks.mine.region_subspaces = hanging
from localedit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("stopping")
    model = save_model(from_unet(tiny_unet(seed=0)), root / "tiny")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environ.update(PREFECT_HOME=str(root / "prefect-home"), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
                   LOCALEDIT_TASK_SLOTS="2", OMP_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return {"model": str(model), "env": environ}


def _mine(env, out, *options, hanging=False) -> subprocess.Popen:
    """``localedit mine`` in a session of its own (its process group, as a terminal's job is)."""
    code = ["-c", HANGING] if hanging else ["-m", "localedit.cli"]
    return subprocess.Popen([sys.executable, *code, "mine", "--model", env["model"], *SETTINGS, *options,
                             "--out", str(out)], cwd=REPO, env=env["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_mid_run(proc, out) -> list[psutil.Process]:
    """Wait until the first image's subspaces are marked (the second's hang); return the processes the run started."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if (out / "store.zarr" / "zarr.json").exists() and RunStore(out).progress()["subspace"][0] >= 1:
            children = psutil.Process(proc.pid).children(recursive=True)
            assert any("prefect" in " ".join(c.cmdline()) for c in children), "no temporary Prefect server"
            return children
        time.sleep(0.2)
    raise AssertionError("the run did not get going")


def test_sigterm_stops_mid_run_leaves_no_server_and_resumes(env, tmp_path):
    out = tmp_path / "run"
    proc = _mine(env, out, hanging=True)
    try:
        children = _wait_mid_run(proc, out)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=120)  # a deadline, not a timing: the hanging tasks sleep for an hour
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not stop the run")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM, rc
    stderr = proc.stderr.read()
    assert stopped_line(signal.SIGTERM) in stderr
    assert "Crash detected" not in stderr and "ERROR" not in stderr, stderr  # a stop is not a crash
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[c.cmdline() for c in alive]}"
    store = RunStore(out)
    done, total = store.progress()["subspace"]
    assert 1 <= done < total
    for i in range(2):  # what is marked is whole
        for block in store.config.blocks:
            if store.subspace_done(i, block):
                basis, _ = store.subspace(i, block)
                torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-4, rtol=0)

    for run_dir in (out, tmp_path / "reference"):  # resumed, then uninterrupted
        proc = _mine(env, run_dir)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    a, b = catalogue.open(out), catalogue.open(tmp_path / "reference")
    assert list(a.frame["id"]) == list(b.frame["id"])
    for direction in a.frame["id"]:
        torch.testing.assert_close(a.vector(direction), b.vector(direction), atol=1e-6, rtol=0)


def test_ctrl_c_stops_a_dask_run_in_one_line(env, tmp_path):
    # Found by a new user: a stopped Dask run printed ~90 lines after its one line (each worker's traceback of
    # its interrupted task, then the closing cluster's warnings of lost and restarted workers).
    out = tmp_path / "run"
    proc = _mine(env, out, "--runner", "dask", hanging=True)  # forked workers inherit the hanging task
    try:
        children = _wait_mid_run(proc, out)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group, workers too
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = [line for line in proc.stderr.read().splitlines() if line.strip() and not line.startswith("mining:")]
    assert rc == 130 and said == [stopped_line(signal.SIGINT)], said  # besides the bar
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[c.cmdline() for c in alive]}"


def test_kill_9_leaves_no_server_behind(env, tmp_path):
    out = tmp_path / "run"
    proc = _mine(env, out, hanging=True)
    try:
        children = _wait_mid_run(proc, out)
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"orphans: {[c.cmdline() for c in alive]}"


def test_after_the_first_signal_a_second_ends_the_process_at_once_even_once_the_flow_has_unwound(monkeypatch):
    # Found by a new user: the flow's handlers were put back as it unwound, so a second Ctrl-C during the
    # cluster's and server's close waited for the grace timer (and cut the server's log drain short).
    import flows.stopping as stopping

    ended, timers = [], []
    monkeypatch.setattr(stopping, "_received", [])
    monkeypatch.setattr(stopping, "end", ended.append)
    monkeypatch.setattr(stopping.threading, "Timer", lambda *a, **k: timers.append(a) or _Idle())
    monkeypatch.setattr(stopping, "quiet_console", lambda: None)
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt), stopping.stop_handlers():
            signal.raise_signal(signal.SIGINT)  # the first: passed on, the grace timer armed
        assert timers and not ended
        with pytest.raises(KeyboardInterrupt):  # (the real ``end`` exits the process here)
            signal.raise_signal(signal.SIGINT)  # the second, after the flow has unwound
        assert ended == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(stopping, "_received", [])
    with stopping.stop_handlers():  # a run that was not stopped leaves the handlers as they were
        pass
    assert signal.getsignal(signal.SIGINT) is before


class _Idle:
    daemon = False

    def start(self):
        pass


def test_the_stop_line_is_said_once_per_command(capsys):
    # make test, once in six: closing the Dask cluster outlasted the grace timer, so the command and the timer's
    # ``end`` both said the line
    # A new user's: the local run's bar was drawn again below the line, and in a file the line ran on from a bar's
    from tqdm.auto import tqdm

    from localedit.utils.console import new_command, say_stopped

    new_command()
    with tqdm(total=3, file=sys.stderr, desc="mining", mininterval=0, miniters=1) as bar:
        bar.update()
        say_stopped(signal.SIGINT)  # the command, once the run has unwound
        say_stopped(signal.SIGINT)  # the grace timer, still armed while the process closes
        bar.update()  # the flow goes on unwinding
    said = capsys.readouterr().err
    assert "mining:  33%" in said and said.endswith("\n" + stopped_line(signal.SIGINT) + "\n"), said
    assert said.count("localedit: stopped") == 1
    new_command()  # another command in the same process (main called again) is told of its own stop
    say_stopped(signal.SIGTERM)
    assert capsys.readouterr().err == "\n" + stopped_line(signal.SIGTERM) + "\n"
