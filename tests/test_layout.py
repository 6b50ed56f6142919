"""Where an evaluation's strips go: staged while it runs, swapped in with its metrics."""

import json

import pandas as pd
import torch

from localedit.evaluation import schema as col
from localedit.evaluation.baselines import Direction
from localedit.evaluation.layout import STAGED_STRIPS_DIR, STRIPS_DIR, SUMMARY_FILE, strip_path
from localedit.evaluation.plan import plan_evaluation
from localedit.evaluation.summary import save_results


def _direction(id_: str) -> Direction:
    return Direction(id_, "masked", "eyes", "h", torch.ones(4), 500, None)


def test_a_stopped_evaluation_leaves_the_finished_ones_strips_and_metrics_together(tmp_path):
    """Found by a second new user: a stopped `evaluate` overwrote a strip of the last finished evaluation."""
    finished = strip_path(tmp_path, "catalogue:eyes/individual/0")
    finished.parent.mkdir()
    finished.write_bytes(b"finished")
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"finished": True}))
    # A new evaluation plans its strips into the staging folder and is stopped after writing one.
    plan = plan_evaluation([_direction("catalogue:eyes/individual/0")], ["a"], 2, out_dir=tmp_path)
    staged = plan.assignments[0].strip
    assert staged == strip_path(tmp_path, "catalogue:eyes/individual/0", staged=True)
    staged.parent.mkdir()
    staged.write_bytes(b"stopped")
    assert finished.read_bytes() == b"finished"  # what `localedit report` shows is still the finished evaluation
    # The next evaluation starts without the stopped one's strips, and its own replace the old ones with its metrics.
    plan = plan_evaluation([_direction("catalogue:mouth/individual/0")], ["a"], 2, out_dir=tmp_path)
    assert not (tmp_path / STAGED_STRIPS_DIR).exists()
    fresh = plan.assignments[0].strip
    fresh.parent.mkdir()
    fresh.write_bytes(b"fresh")
    rows = pd.DataFrame({col.KIND: [col.KIND_MATCHED], col.METHOD: ["masked"], col.IMAGE_SET: [col.TRANSFER_SET],
                         col.IMAGE: ["h0"], col.DIRECTION: ["catalogue:mouth/individual/0"], col.REGION: ["mouth"],
                         col.LOCALITY: [0.5], col.MATCHED_ALPHA: [0.1], col.MATCHED: [True]})
    save_results(tmp_path, rows, {})
    assert sorted(p.name for p in (tmp_path / STRIPS_DIR).iterdir()) == [fresh.name]
    assert not (tmp_path / STAGED_STRIPS_DIR).exists() and not (tmp_path / f"{STRIPS_DIR}.old").exists()
