"""Settings: deployment.yaml documents the flow's own defaults; a run's edit settings travel with its catalogue,
so ``localedit edit`` and the evaluation apply a direction the same way."""

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

import localedit.core.editing as editing
from flows.mine import mine_directions
from localedit.cli import main
from localedit.core.models import from_unet, save_model
from localedit.core.settings import EditSettings, MiningSettings
from localedit.evaluation.plan import plan_evaluation
from localedit.evaluation.settings import EvaluationSettings
from localedit.store import catalogue
from localedit.store.runs import RunStore
from tests.conftest import tiny_unet
from tests.test_catalogue import fill_run

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT_OVERRIDES = {"progress"}  # set on purpose: a worker logs each task instead of drawing a bar


def test_deployment_yaml_documents_the_flow_parameters_and_defaults():
    text = (REPO / "deployment.yaml").read_text()
    spec = yaml.safe_load(text)
    parameters = inspect.signature(mine_directions.fn).parameters
    for deployment in spec["deployments"]:
        assert set(deployment["parameters"]) <= set(parameters), deployment["name"]
    shared = spec["definitions"]["mining"]
    for name, value in shared.items():
        if name not in DEPLOYMENT_OVERRIDES:
            assert value == parameters[name].default, (name, value, parameters[name].default)
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    undocumented = [name for name in parameters if not re.search(rf"\b{name}\b", header)]
    assert not undocumented, f"deployment.yaml's comment does not describe {undocumented}"


def test_the_flow_defaults_are_the_mining_settings_and_a_preset_travels_as_parameters():
    from flows.mine import mining_parameters, preparation
    from localedit.core.settings import BUNDLED_RUN

    parameters = inspect.signature(mine_directions.fn).parameters
    assert {name: parameters[name].default for name in mining_parameters(MiningSettings())} == \
        mining_parameters(MiningSettings())
    prepared = preparation({"out": "out/x", "images": "bundled", **mining_parameters(BUNDLED_RUN)})
    assert prepared["jive"] == BUNDLED_RUN.jive and prepared["jive"]["joint_rank"] == 1
    assert (prepared["t"], prepared["k"], prepared["num_steps"]) == (BUNDLED_RUN.t, BUNDLED_RUN.k, BUNDLED_RUN.num_steps)


def test_a_legacy_catalogue_falls_back_to_the_default_edit_settings_with_a_warning(tmp_path):
    store = fill_run(tmp_path / "run")
    catalogue.build(store.run_dir, edit=EditSettings("from_t_edit", 300))
    assert catalogue.open(store.run_dir).edit == EditSettings("from_t_edit", 300)
    del RunStore(store.run_dir).group["directions"].attrs[catalogue.EDIT_ATTR]  # as an older localedit wrote it
    with pytest.warns(catalogue.LegacyCatalogueWarning, match="stores no edit settings"):
        cat = catalogue.open(store.run_dir)
    assert cat.edit == EditSettings() and catalogue.EDIT_ATTR not in cat.attrs


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from localedit.bundled.samples import write_samples

    root = tmp_path_factory.mktemp("files")
    save_model(from_unet(tiny_unet(size=32)), root / "model")  # the factor probe reads 32-px images
    write_samples(root / "samples", n_mine=2, n_heldout=2)
    return root


class _Recorded(editing.Edit):
    """``editing.Edit`` that records the schedule of every edit made."""

    seen: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Recorded.seen.append(self.schedule)


@pytest.mark.parametrize("edit", [{}, {"edit_schedule": "from_t_edit", "t_edit": 700}], ids=["default", "from_t_edit"])
def test_edit_command_and_evaluation_apply_a_direction_as_the_catalogue_says(edit, tiny_files, prefect_api, tmp_path,
                                                                             monkeypatch):
    """A run mined at t = 300 (not the old fixed t_edit = 500): the CLI's strip and the evaluation's matching
    and scoring edit with the schedule stored in the catalogue, and nothing else."""
    from tasks.evaluate import catalogue_directions, match_task, prepare_evaluation, score_task

    torch.set_num_threads(1)
    run = tmp_path / "run"
    mine_directions(str(run), model=str(tiny_files / "model"), samples=2, regions="eyes,mouth", t=300, k=2,
                    num_steps=4, joint_rank=1, min_support=1, progress=False, **edit)
    cat = catalogue.open(run)
    assert cat.attrs["t"] != MiningSettings.t
    stored = EditSettings(**{"schedule": edit.get("edit_schedule", EditSettings.schedule),
                             "t_edit": edit.get("t_edit", EditSettings.t_edit)})
    assert cat.edit == stored
    direction = cat.frame["id"].iloc[0]
    monkeypatch.setattr(editing, "Edit", _Recorded)

    _Recorded.seen = []
    image = tiny_files / "samples" / "heldout_000.png"
    assert main(["edit", "--catalogue", str(run), "--direction", direction, "--image", str(image),
                 "--alphas=0.5", "--out", str(tmp_path / "strip.png")]) == 0
    by_cli = set(_Recorded.seen)

    _Recorded.seen = []
    settings = EvaluationSettings(n_source=1, n_heldout=1, strip_images=0)
    prepared = prepare_evaluation.fn(str(run), settings, str(tiny_files / "samples"))
    ours = [d for d in catalogue_directions.fn(str(run), 1) if d.id == f"catalogue:{direction}"]
    plan = plan_evaluation(ours, prepared.source.keys, 1, settings)
    matched = match_task.fn(prepared, plan.assignments[0])
    score_task.fn(prepared, plan.assignments[0], matched)
    by_evaluation = set(_Recorded.seen)

    assert by_cli == by_evaluation == {stored.edit_schedule}


def test_an_unknown_schedule_is_refused_where_it_is_given():
    with pytest.raises(ValueError, match="unknown edit schedule"):
        EditSettings("sometimes")
