"""Bad input and broken models (issue 15): a clear error, nothing poisoned, nothing silently wrong.

The public-report cases (copied from ``../shared/cases`` into ``tests/cases``) and a battery of
generated bad inputs of each kind through ``localedit mine``, ``edit`` and ``demo``: exit status 2, one
``localedit: error:`` line, and an ``--out`` that is untouched (or, for inputs converted with a note,
fully valid).
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.mine import mine_directions
from localedit.cli import main
from localedit.core.models import from_unet, save_model
from localedit.core.regions import resolve_regions
from localedit.store.runs import RunStore
from localedit.utils.imagefile import ImageInputWarning, load_image, load_mask
from tasks.prepare import SkippedFilesWarning, image_files
from tasks.runtime import transient
from tests.conftest import tiny_unet

CASES = Path(__file__).resolve().parent / "cases"  # copies of ../shared/cases: CI has no shared folder
SIZE = 16


def case(name: str) -> Path:
    return CASES / name


# -- the cases ------------------------------------------------------------------------------


def test_case_gray16_png_is_read_at_its_bit_depth():
    folder = case("gray16-png")
    with Image.open(folder / "gray16.png") as img:
        assert img.mode.startswith("I")  # the case really is 16-bit
    sixteen, eight = load_image(folder / "gray16.png", 32), load_image(folder / "gray8_as_rgb.png", 32)
    assert sixteen.min() < 0.5  # not the all-white image convert("RGB") made of it
    torch.testing.assert_close(sixteen, eight, atol=1 / 255, rtol=0)


def test_case_rgba_transparent_image_is_composited_with_a_note():
    folder = case("rgba-transparent-image")
    with pytest.warns(ImageInputWarning, match="187 transparent .* composited on background RGB\\(255, 255, 255\\)"):
        image = load_image(folder / "rgba_bg.png", 32)
    with Image.open(folder / "rgba_bg.png") as img:
        transparent = torch.from_numpy(np.asarray(img)[..., 3] == 0)
    assert bool((image[:, transparent] == 1).all())  # white as stated, not the black stored under them


def test_case_rgba_mask_is_read_from_its_alpha_channel():
    folder = case("rgba-mask-and-whole-region")
    regions = {r.name: r for r in resolve_regions(folder / "regions_rgba.json", 32)}
    assert regions["eyes"].pixels == 140


def test_case_whole_image_region_in_paper_mode_mines(prefect_api, tmp_path):
    """--paper-jive has no complement blocks, so a whole-image region is accepted and the run completes."""
    folder = case("rgba-mask-and-whole-region")
    model = save_model(from_unet(tiny_unet()), tmp_path / "tiny")
    out = tmp_path / "run"
    summary = mine_directions(out=str(out), model=str(model), samples=1, k=2, num_steps=10,
                              regions=str(folder / "regions_whole.json"), complements=False, joint_rank=1,
                              min_support=1, progress=False)
    assert summary.tasks["subspace"].computed == 2 and RunStore(out).progress()["split"] == (1, 1)
    with pytest.raises(ValueError, match=r"regions \['face'\] cover the whole image"):  # with complements: refused
        mine_directions(out=str(tmp_path / "refused"), model=str(model), samples=1, k=2, num_steps=10,
                        regions=str(folder / "regions_whole.json"), progress=False)
    assert not (tmp_path / "refused").exists()


def test_case_out_is_a_file(tmp_path, capsys):
    """Case ../shared/cases/out-is-a-file: --out naming a file is refused in one line, before anything is written."""
    afile = tmp_path / "afile.txt"
    afile.write_text("notes\n")
    for out, message in ((afile, f"--out {afile} exists and is not a directory"),
                         (afile / "sub", f"--out {afile / 'sub'} cannot be created: {afile} is a file, not a directory")):
        assert main(["mine", "--samples", "1", "--k", "1", "--num-steps", "10", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"localedit: error: {message}"
    assert afile.read_text() == "notes\n"


@pytest.mark.parametrize("option, value, message", [
    ("--threshold", "2", "threshold is a squared cosine in (0, 1]; got 2.0"),
    ("--min-support", "0", "min_support must be at least 1; got 0"),
])
def test_impossible_catalogue_settings_are_refused_before_any_mining(option, value, message, tmp_path, capsys):
    """Found by a new user: --threshold 2 used to fail after the whole mining, with Prefect's traceback."""
    out = tmp_path / "run"
    assert main(["mine", "--samples", "1", "--k", "1", "--num-steps", "10", option, value, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"localedit: error: {message}"
    assert not out.exists()


def test_out_with_an_unknown_date_code_and_an_empty_regions_file_are_refused(tmp_path, capsys):
    """Found by a new user: --out runs/%Q made a folder named %Q; a regions file without regions blamed JIVE."""
    assert main(["mine", "--samples", "1", "--out", str(tmp_path / "runs" / "%Q")]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown date code(s) %Q (strftime codes such as %Y-%m-%d; "
                                                    "%% for a literal %)")
    empty = tmp_path / "regions.json"
    empty.write_text('{"regions": {}}')
    assert main(["mine", "--samples", "1", "--regions", str(empty), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"localedit: error: regions file {empty} defines no regions"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()


def test_help_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "h-space" in shown and "``" not in shown


def test_bad_input_is_never_retried():
    class State:
        def __init__(self, err):
            self.err = err

        def result(self):
            raise self.err

    for err in (FileExistsError("x"), NotADirectoryError("x"), IsADirectoryError("x"), PermissionError("x"),
                ValueError("x"), KeyError("x")):
        assert transient(None, None, State(err)) is False, err
    assert transient(None, None, State(RuntimeError("CUDA out of memory"))) is True


def test_hidden_files_are_skipped_with_a_note(tmp_path):
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.warns(SkippedFilesWarning, match=r"skipped 2 .*: \.DS_Store, \._a\.png"):
        assert [p.name for p in image_files(str(tmp_path))] == ["a.png"]


# -- the image reader beyond the cases ------------------------------------------------------


def test_display_tags_are_honoured(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    reference = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    rotated = Image.fromarray(np.rot90(pixels, -1).copy())  # stored turned; EXIF 8 turns it back for display
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(tmp_path / "turned.jpg", exif=exif, quality=100, subsampling=0)
    assert (load_image(tmp_path / "turned.jpg", SIZE) - reference).abs().mean() < 0.03
    palette = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    palette.save(tmp_path / "palette.png")
    torch.testing.assert_close(load_image(tmp_path / "palette.png", SIZE),
                               torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1).float() / 255)
    gamma = Image.fromarray(pixels)
    gamma.save(tmp_path / "linear.png", pnginfo=_gamma_chunk(1.0))  # linear-light file: brighter once shown
    assert load_image(tmp_path / "linear.png", SIZE).mean() > reference.mean() + 0.05
    from PIL import ImageCms

    srgb, xyz = (ImageCms.ImageCmsProfile(ImageCms.createProfile(name)).tobytes() for name in ("sRGB", "XYZ"))
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb)
    torch.testing.assert_close(load_image(tmp_path / "srgb.png", SIZE), reference)
    Image.fromarray(pixels).save(tmp_path / "xyz.png", icc_profile=xyz)  # a profile LittleCMS cannot map: refused
    with pytest.raises(ValueError, match="cannot apply the colour profile embedded in image"):
        load_image(tmp_path / "xyz.png", SIZE)
    sixteen = (pixels[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "gray16.png")
    torch.testing.assert_close(load_image(tmp_path / "gray16.png", SIZE)[0], reference[0], atol=1e-6, rtol=0)


def _gamma_chunk(gamma: float):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", int(round(gamma * 100000)).to_bytes(4, "big"))
    return info


def test_masks_read_alpha_or_luminance_and_refuse_the_rest(tmp_path):
    inside = np.zeros((SIZE, SIZE), bool)
    inside[3:7, 2:9] = True
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = np.where(inside, 255, 0)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")  # black strokes on a transparent layer
    assert torch.equal(load_mask(tmp_path / "alpha.png", SIZE), torch.from_numpy(inside).float())
    rgba[0, 0, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "soft.png")
    with pytest.raises(ValueError, match="translucent"):
        load_mask(tmp_path / "soft.png", SIZE)
    opaque = np.dstack([np.where(inside, 255, 0)] * 3 + [np.full((SIZE, SIZE), 255)]).astype(np.uint8)
    Image.fromarray(opaque).save(tmp_path / "opaque.png")  # RGBA without transparency: luminance as usual
    assert torch.equal(load_mask(tmp_path / "opaque.png", SIZE), torch.from_numpy(inside).float())
    red = np.zeros((SIZE, SIZE, 3), np.uint8)
    red[inside] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "red.png")
    with pytest.raises(ValueError, match="not binary"):
        load_mask(tmp_path / "red.png", SIZE)


# -- the battery: generated bad inputs through mine, edit and demo ---------------------------


def _png(path: Path, size: int = SIZE, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _bad_images(root: Path) -> dict[str, Path]:
    """One bad image file per way an image can be bad."""
    root.mkdir()
    images = {
        "not-an-image": root / "text.png", "empty": root / "empty.png", "truncated": root / "truncated.png",
        "wrong-size": _png(root / "big.png", 2 * SIZE), "missing": root / "missing.png", "a-folder": root / "folder.png",
        "float-tiff": root / "float.tiff", "int32-tiff": root / "int32.tiff", "animated": root / "animated.gif",
    }
    images["not-an-image"].write_text("hello")
    images["empty"].write_bytes(b"")
    images["truncated"].write_bytes(_png(root / "whole.png").read_bytes()[:200])
    images["a-folder"].mkdir()
    Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32)).save(images["float-tiff"])
    Image.fromarray(np.full((SIZE, SIZE), 70000, np.int32)).save(images["int32-tiff"])
    frames = [Image.new("RGB", (SIZE, SIZE), c) for c in ("red", "blue")]
    frames[0].save(images["animated"], save_all=True, append_images=frames[1:])
    return images


def _bad_models(root: Path, good: Path) -> dict[str, Path]:
    """One broken model folder per way a folder can be broken."""
    models = {}
    for name in ("no-scheduler", "broken-scheduler", "unknown-prediction", "zero-snr-epsilon", "truncated-weights",
                 "non-square", "garbled-config"):
        models[name] = root / name
        shutil.copytree(good, models[name])
    (models["no-scheduler"] / "scheduler_config.json").unlink()
    (models["broken-scheduler"] / "scheduler_config.json").write_text('{"prediction_type": ')
    (models["unknown-prediction"] / "scheduler_config.json").write_text('{"prediction_type": "flow"}')
    (models["zero-snr-epsilon"] / "scheduler_config.json").write_text('{"rescale_betas_zero_snr": true}')
    (models["truncated-weights"] / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    config = json.loads((good / "config.json").read_text())
    (models["non-square"] / "config.json").write_text(json.dumps(config | {"sample_size": [SIZE, 2 * SIZE]}))
    (models["garbled-config"] / "config.json").write_text("{ not json")
    models["a-file"] = root / "model.txt"
    models["a-file"].write_text("not a model")
    models["missing"] = root / "nothing" / "here"
    models["a-folder-of-models"] = root / "models"  # as data/models is: given in place of data/models/faces-32
    shutil.copytree(good, models["a-folder-of-models"] / "tiny")
    return models


def _bad_regions(root: Path) -> dict[str, str]:
    root.mkdir()
    grey = np.full((SIZE, SIZE), 128, np.uint8)
    Image.fromarray(grey).save(root / "grey.png")
    soft = np.zeros((SIZE, SIZE, 4), np.uint8)
    soft[2:5, 2:5, 3], soft[0, 0, 3] = 255, 100
    Image.fromarray(soft).save(root / "soft.png")
    _png(root / "big-mask.png", 2 * SIZE, "L")
    specs = {
        "unknown-preset": "eyes,nose",
        "json-syntax": '{"regions": {',
        "json-not-object": "[1, 2]",
        "entry-not-object": '{"regions": {"a": 5, "b": {"box": [4, 4, 8, 8]}}}',
        "box-not-numbers": '{"regions": {"a": {"box": ["top", 0, 4, 4]}, "b": {"box": [4, 4, 8, 8]}}}',
        "unknown-key": '{"regions": {"a": {"box": [0, 0, 4, 4], "colour": 1}, "b": {"box": [4, 4, 8, 8]}}}',
        "grey-mask": '{"regions": {"a": {"mask": "grey.png"}, "b": {"box": [4, 4, 8, 8]}}}',
        "translucent-mask": '{"regions": {"a": {"mask": "soft.png"}, "b": {"box": [8, 8, 12, 12]}}}',
        "wrong-size-mask": '{"regions": {"a": {"mask": "big-mask.png"}, "b": {"box": [4, 4, 8, 8]}}}',
        "missing-mask": '{"regions": {"a": {"mask": "nowhere.png"}, "b": {"box": [4, 4, 8, 8]}}}',
        "whole-image": '{"regions": {"a": {"box": [0, 0, 1, 1], "relative": true}, "b": {"box": [4, 4, 8, 8]}}}',
        "empty-box": '{"regions": {"a": {"box": [4, 4, 4, 8]}, "b": {"box": [4, 4, 8, 8]}}}',
    }
    paths = {}
    for name, text in specs.items():
        if text.startswith(("{", "[")):
            (root / f"{name}.json").write_text(text)
            paths[name] = str(root / f"{name}.json")
        else:
            paths[name] = text
    return paths


@pytest.fixture(scope="module")
def battery(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("battery")
    model = save_model(from_unet(tiny_unet()), root / "tiny")
    run = root / "run"
    mine_directions(out=str(run), model=str(model), samples=2, k=2, num_steps=10, joint_rank=1, min_support=1,
                    progress=False)
    afile = root / "existing.txt"
    afile.write_text("keep me\n")
    return {"model": model, "run": run, "image": _png(root / "face.png"), "file": afile,
            "images": _bad_images(root / "images"), "models": _bad_models(root, model),
            "regions": _bad_regions(root / "regions")}


def _commands(b: dict, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every bad input through every command that reads it; all write to ``out``."""
    model, run, image, afile = str(b["model"]), str(b["run"]), str(b["image"]), str(b["file"])
    mine = ["mine", "--k", "2", "--num-steps", "10"]
    edit = ["edit", "--catalogue", run, "--direction", "eyes/individual/0"]
    demo = ["demo", "--k", "2"]
    commands = []
    for name, path in b["images"].items():
        commands.append((f"edit --image {name}", edit + ["--image", image, str(path), "--out", str(out / "s.png")]))
        commands.append((f"demo --image {name}", demo + ["--model", model, "--image", str(path), "--out", str(out)]))
        folder = out.parent / f"images-{name}"
        if not folder.exists():
            folder.mkdir()
            shutil.copy(image, folder / "a.png")
            if path.exists():
                (shutil.copytree if path.is_dir() else shutil.copy)(path, folder / path.name)
        if path.is_file():  # (a sub-folder of an --images folder is skipped with a note, like hidden files)
            commands.append((f"mine --images {name}", mine + ["--model", model, "--images", str(folder), "--out", str(out)]))
    for name, path in b["models"].items():
        commands.append((f"mine --model {name}", mine + ["--model", str(path), "--samples", "1", "--out", str(out)]))
        commands.append((f"edit --model {name}", edit + ["--model", str(path), "--image", image, "--out", str(out / "s.png")]))
        commands.append((f"demo --model {name}", demo + ["--model", str(path), "--image", image, "--out", str(out)]))
    for name, spec in b["regions"].items():
        commands.append((f"mine --regions {name}", mine + ["--model", model, "--samples", "1", "--regions", spec, "--out", str(out)]))
        commands.append((f"demo --regions {name}", demo + ["--model", model, "--regions", spec, "--out", str(out)]))
    commands += [
        ("catalogue without show or query", ["catalogue", run]),
        ("mine --out a file", mine + ["--model", model, "--samples", "1", "--out", afile]),
        ("mine --out under a file", mine + ["--model", model, "--samples", "1", "--out", afile + "/run"]),
        ("demo --out a file", demo + ["--model", model, "--out", afile]),
        ("edit --out a folder", edit + ["--image", image, "--out", str(out.parent)]),
        ("edit --out not png", edit + ["--image", image, "--out", str(out / "s.jpg")]),
        ("edit --out under a file", edit + ["--image", image, "--out", afile + "/s.png"]),
        ("mine --k 0", ["mine", "--model", model, "--samples", "1", "--k", "0", "--out", str(out)]),
        ("mine --t 5000", mine + ["--model", model, "--samples", "1", "--t", "5000", "--out", str(out)]),
        ("mine --num-steps 0", ["mine", "--model", model, "--samples", "1", "--num-steps", "0", "--out", str(out)]),
        ("mine --samples 0", mine + ["--model", model, "--samples", "0", "--out", str(out)]),
        ("mine --joint-rank 9", mine + ["--model", model, "--samples", "1", "--joint-rank", "9", "--out", str(out)]),
        ("mine --images not a folder", mine + ["--model", model, "--images", image, "--out", str(out)]),
        ("mine resumed with other settings", ["mine", "--model", model, "--samples", "2", "--k", "3",
                                               "--num-steps", "10", "--out", run]),
        ("edit --direction unknown", ["edit", "--catalogue", run, "--direction", "nose/individual/0", "--image", image,
                                      "--out", str(out / "s.png")]),
        ("edit --catalogue not a run", ["edit", "--catalogue", str(out.parent), "--direction", "eyes/individual/0",
                                        "--image", image, "--out", str(out / "s.png")]),
        ("edit another model", edit + ["--model", str(b["models"]["zero-snr-epsilon"].parent / "tiny-other"),
                                       "--image", image, "--out", str(out / "s.png")]),
        ("edit --alphas nan", edit + ["--image", image, "--alphas", "nan,0.1", "--out", str(out / "s.png")]),
        # Found by a second new user: evaluate started work (or printed Prefect's traceback) on these.
        ("evaluate --sources 0", ["evaluate", run, "--sources", "0"]),
        ("evaluate --heldout -3", ["evaluate", run, "--sources", "1", "--heldout", "-3"]),
        ("evaluate --target 5", ["evaluate", run, "--sources", "1", "--target", "5"]),
        ("evaluate --target 0", ["evaluate", run, "--sources", "1", "--target", "0"]),
        ("evaluate --sources beyond the run", ["evaluate", run, "--sources", "99"]),
        ("evaluate --heldout beyond the samples", ["evaluate", run, "--sources", "1", "--heldout", "100000"]),
        ("evaluate no run", ["evaluate", str(out.parent / "nowhere")]),
        ("mine --workers 0", mine + ["--model", model, "--samples", "1", "--runner", "dask", "--workers", "0",
                                     "--out", str(out)]),
        # Found by a new user: --workers was ignored where no LocalCluster is started.
        ("mine --workers with --runner local", mine + ["--model", model, "--samples", "1", "--workers", "2",
                                                       "--out", str(out)]),
        ("mine --workers with --dask-address", mine + ["--model", model, "--samples", "1", "--runner", "dask",
                                                       "--dask-address", "tcp://127.0.0.1:1", "--workers", "2",
                                                       "--out", str(out)]),
        ("mine --dask-address not an address", mine + ["--model", model, "--samples", "1", "--runner", "dask",
                                                       "--dask-address", "notanaddress", "--out", str(out)]),
        ("mine --dask-address nobody answers", mine + ["--model", model, "--samples", "1", "--runner", "dask",
                                                       "--dask-address", "tcp://127.0.0.1:1", "--out", str(out)]),
        ("mine --t-edit beyond the timesteps", mine + ["--model", model, "--samples", "1", "--edit-schedule",
                                                       "from_t_edit", "--t-edit", "2000", "--out", str(out)]),
        ("mine --t-edit without its schedule", mine + ["--model", model, "--samples", "1", "--t-edit", "300",
                                                       "--out", str(out)]),
        ("evaluate RUN --regions", ["evaluate", run, "--sources", "1", "--regions", "eyes,hair"]),
    ]
    return commands


def test_battery_of_bad_inputs_is_one_line_exit_2_and_writes_nothing(battery, tmp_path, capsys):
    save_model(from_unet(tiny_unet(seed=3)), battery["models"]["zero-snr-epsilon"].parent / "tiny-other")
    run_before = sorted(str(p.relative_to(battery["run"])) for p in battery["run"].rglob("*"))
    failures = []
    commands = _commands(battery, tmp_path / "out")
    for name, argv in commands:
        out = tmp_path / "out"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageInputWarning)
            try:
                rc = main(argv)
            except SystemExit as usage:  # argparse's usage errors exit from inside main
                rc = usage.code
            except BaseException as raised:  # noqa: BLE001 -- reported with the other failures
                rc = f"raised {raised!r}"[:300]
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("localedit: error: ")]
        problems = []
        if rc != 2:
            problems.append(f"exit {rc}")
        if len(errors) != 1 or "Traceback" in err or any(not line.startswith("localedit: ") for line in lines):
            problems.append(f"stderr {err!r}")
        if out.exists() and any(out.iterdir()):
            problems.append(f"wrote {sorted(p.name for p in out.iterdir())}")
            shutil.rmtree(out)
        if battery["file"].read_text() != "keep me\n":
            problems.append("changed the existing file")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert len(commands) > 60
    assert not failures, "\n".join(failures)
    assert sorted(str(p.relative_to(battery["run"])) for p in battery["run"].rglob("*")) == run_before


@pytest.mark.parametrize("argv, message", [
    (["mine", "--samples", "1", "--edit-schedule", "from_t_edit", "--t-edit", "2000"],
     "--t-edit 2000 edits no step: the model's timesteps are 0 to 999"),
    (["mine", "--samples", "1", "--t-edit", "300"], "--t-edit applies only with --edit-schedule from_t_edit"),
    (["evaluate", "{run}", "--regions", "eyes,hair", "--num-steps", "7"], "--regions, --num-steps only apply without a run"),
])
def test_options_that_would_do_nothing_are_refused(argv, message, battery, tmp_path, capsys):
    """Found by a second new user: these were accepted and ignored (or made every direction a no-op)."""
    argv = [a.replace("{run}", str(battery["run"])) for a in argv]
    if argv[0] == "mine":
        argv += ["--model", str(battery["model"]), "--k", "2", "--num-steps", "10", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"localedit: error: {message}")
    assert not (tmp_path / "out").exists()


def test_on_a_terminal_warnings_and_the_stop_line_clear_a_progress_bars_line_first(monkeypatch):
    # Found by a new user: "localedit: warning: ..." and the stop line ran on from the end of the bar's line.
    import io

    from tqdm.auto import tqdm

    from localedit.cli import _one_line_warning
    from localedit.utils.console import CLEAR_LINE, say, stopped_line

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _one_line_warning("a\nb", UserWarning, "x.py", 1) == f"{CLEAR_LINE}localedit: warning: a b\n"
    terminal.write("\rcatalogue:  67%|######6   | 2/3")  # a Dask worker's bar: this process has no tqdm of it
    say(stopped_line(2))
    assert terminal.getvalue().endswith(f"2/3{CLEAR_LINE}localedit: stopped by SIGINT; finished work is kept "
                                        "(rerun the same command to resume)\n")
    with tqdm(total=3, file=terminal, desc="mining") as bar:  # this process's own bar is drawn again after
        bar.update()
        say("localedit: stopped")
        bar.update()
    lines = terminal.getvalue().replace(CLEAR_LINE, "\n").replace("\r", "\n").split("\n")
    after = lines[lines.index("localedit: stopped") + 1:]
    assert any(line.startswith("mining:") for line in after), lines


def test_inputs_converted_with_a_note_give_a_valid_strip(battery, tmp_path):
    """What is converted faithfully (16-bit, transparency) is edited, and says so in one warning line."""
    rgba = np.dstack([np.asarray(Image.open(battery["image"]))] + [np.full((SIZE, SIZE), 255, np.uint8)])
    rgba[:3, :3, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 200).save(tmp_path / "gray16.png")
    out = tmp_path / "strip.png"
    with pytest.warns(ImageInputWarning, match="rgba.png has 9 transparent .* composited on background"):
        assert main(["edit", "--catalogue", str(battery["run"]), "--direction", "eyes/individual/0", "--image",
                     str(tmp_path / "rgba.png"), str(tmp_path / "gray16.png"), "--out", str(out)]) == 0
    assert warnings.formatwarning("a\nb", ImageInputWarning, "x.py", 1) == "localedit: warning: a b\n"
    with Image.open(out) as strip:
        strip.load()
        assert strip.mode == "RGB" and strip.height > 2 * SIZE * 4
