"""The ``localedit`` command line.

Library commands run in-process; pipeline commands hand over to the Prefect flows in
``flows/`` (imported lazily, so the library itself never imports Prefect).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import torch

from localedit.core.settings import (
    BUNDLED_RUN,
    EDIT_SCHEDULES,
    PRECISIONS,
    CatalogueSettings,
    EditSettings,
    MiningSettings,
)
from localedit.evaluation.settings import EvaluationSettings
from localedit.utils.badinput import BAD_INPUT, check_output_dir, check_output_file
from localedit.utils.console import line_start, new_command, say_stopped

DESCRIPTION = ("Local edits in a diffusion model's h-space: mine region directions (JIVE joint and individual, "
               "and our extensions) into a catalogue, edit images with them, evaluate and report.")
# Every option's default comes from the settings classes (localedit.core.settings, localedit.evaluation.settings).
MINING, EDITING, CATALOGUE, EVALUATION = MiningSettings(), EditSettings(), CatalogueSettings(), EvaluationSettings()


def _alphas(text: str) -> list[float]:
    """Comma-separated finite strengths (a NaN strength would write a strip of NaN images)."""
    try:
        alphas = [float(a) for a in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(a) for a in alphas):
        raise argparse.ArgumentTypeError(f"{text!r}: strengths must be finite")
    return alphas


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error (``localedit: error: ...``, status 2)."""

    def error(self, message: str):
        self.exit(2, f"localedit: error: {message} (see {self.prog} --help)\n")


def cmd_demo(args: argparse.Namespace) -> int:
    """One image, in memory: invert, mine the regions, write an edit strip per direction."""
    from localedit.bundled.samples import load_image, load_samples
    from localedit.core.editing import edit, write_strip
    from localedit.core.mining import mine_image
    from localedit.core.models import load_model
    from localedit.core.regions import resolve_regions

    out = check_output_dir(args.out)
    model = load_model(args.model)
    print(f"model: {model.source} (fingerprint {model.fingerprint})")
    if args.image:
        image = load_image(args.image, model.resolution)
    else:
        images, factors = load_samples("mine")
        image = images[int(factors["eye_openness"].idxmax())]
    regions = resolve_regions(args.regions, model.resolution)
    found = mine_image(model, image, regions, t=args.t, k=args.k)
    directions = {f"{r}_individual": found.individual(r)[:, 0] for r in found.regions if found.individual(r).shape[1]}
    if found.joint.shape[1]:
        directions["joint"] = found.joint[:, 0]
    for name, sub in zip(found.regions, found.subspaces):
        print(f"{name:>10}: k={sub.basis.shape[1]} iterations={sub.iterations} "
              f"top singular values={[round(float(s), 3) for s in sub.singular_values[:3]]}")
    print(f"JIVE ranks: {found.split.ranks}")
    for name, v in directions.items():
        region = next((r for r in regions if name.startswith(r.name + "_")), None)
        edited = edit(model, None, v, args.alphas, x_T=found.latent.x_T)
        path = write_strip(out / f"{name}.png", image[None], edited, args.alphas,
                           mask=None if region is None else region.mask)
        print(f"wrote {path}")
    return 0


# ``evaluate``'s options for the comparison without a run, and their defaults: a run brings its own.
WITHOUT_A_RUN = {"model": None, "regions": BUNDLED_RUN.regions, "num_steps": BUNDLED_RUN.num_steps,
                 "joint_rank": BUNDLED_RUN.jive["joint_rank"], "out": "out/evaluate-compare"}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score directions at matched strength: a run's catalogue (via the flow), or with --compare alone every method in memory."""
    import json

    from localedit.evaluation.report import text_table, write_report

    settings = EvaluationSettings(args.target, args.sources, args.heldout)  # impossible values fail here, in one line
    if args.run:
        given = [f"--{name.replace('_', '-')}" for name, default in WITHOUT_A_RUN.items() if getattr(args, name) != default]
        if given:
            raise ValueError(f"{', '.join(given)} only apply without a run ({args.run} is evaluated with the "
                             "model, regions and settings it was mined with)")
        from flows.evaluate import evaluate_directions
        from flows.local_server import pipeline_server
        from localedit.bundled.samples import SAMPLES_DIR
        from tasks.evaluate import check_inputs

        # Before Prefect starts: the task would check the same, but its failure log prints a traceback.
        check_inputs(args.run, settings, str(SAMPLES_DIR))
        with pipeline_server():
            result = evaluate_directions(args.run, heldout=args.heldout, sources=args.sources,
                                         baselines=args.compare, target=args.target)
        report = result.report
    elif args.compare:
        from localedit.core.models import load_model
        from localedit.core.settings import jive_params
        from localedit.evaluation.compare import load_probe_or_note, run_comparison
        from localedit.evaluation.metrics import load_lpips

        check_output_dir(args.out)
        model = load_model(args.model)
        perceptual = load_lpips()
        probe, probe_note = load_probe_or_note()
        result = run_comparison(model, args.out, args.regions, args.sources, args.heldout, args.target,
                                num_steps=args.num_steps, perceptual=perceptual, probe=probe,
                                notes={"lpips_note": perceptual.note, "probe_note": probe_note},
                                jive=jive_params(joint_rank=None if args.joint_rank < 0 else args.joint_rank),
                                progress=True)
        report = write_report(args.out)
    else:
        raise ValueError("give a run directory, or --compare for the method comparison on the bundled samples")
    if args.json:
        print(json.dumps({"methods": result.methods}, indent=2))
    else:
        print(text_table(result.methods))
        print(f"report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rewrite an evaluated run's self-contained report.html."""
    from localedit.evaluation.report import write_report

    print(write_report(args.run))
    return 0


def _print_mining(summary) -> None:
    """Two console lines for a ``flows.mine.MiningResult``."""
    built = "kept (up to date)" if summary.catalogue_kept else f"{summary.catalogue_seconds:.0f} s"
    print(f"run: {summary.run_dir} ({summary.counts_text()}; {summary.wall_seconds:.0f} s wall: mining tasks "
          f"{summary.task_seconds:.0f} s computing, catalogue {built})")
    print(f"catalogue: {summary.catalogue}")


def _direction_strip(cat, model, direction: str, images: torch.Tensor, alphas, path: Path) -> Path:
    """Edit ``images`` along a catalogue direction at each alpha (the catalogue's strips' by default) and write
    the strip, region outlined; the direction is applied as the catalogue says (``Catalogue.apply``)."""
    from localedit.core.editing import write_strip

    alphas = list(cat.edit.alphas if alphas is None else alphas)
    region = cat.row(direction)["region"]
    return write_strip(path, images, cat.apply(model, direction, alphas, images=images), alphas,
                       mask=cat.regions[region].mask)


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine a catalogue over many images with the Prefect flow; an existing run directory is resumed."""
    from flows.mine import run_mining

    if args.t_edit is not None and args.edit_schedule != "from_t_edit":
        raise ValueError(f"--t-edit applies only with --edit-schedule from_t_edit (the {args.edit_schedule!r} "
                         "schedule edits every reverse step)")
    summary = run_mining(
        runner=args.runner, dask_address=args.dask_address, workers=args.workers, out=args.out, model=args.model,
        images=args.images, samples=args.samples, seed=args.seed, regions=args.regions, t=args.t, k=args.k,
        num_steps=args.num_steps, joint_rank=args.joint_rank, individual_rank=args.individual_rank,
        complements=not args.paper_jive, precision=args.precision, threshold=args.threshold,
        min_support=args.min_support,
        edit_schedule=args.edit_schedule, t_edit=EDITING.t_edit if args.t_edit is None else args.t_edit,
        gpu=args.gpu)
    _print_mining(summary)
    return 0


CATALOGUE_COLUMNS = ["id", "method", "label", "label_share", "edit_locality", "edit_purity", "reference",
                     "reference_cos", "consistency", "support", "n_images"]


def _in_id_order(frame):
    """Rows by region, then family, then rank (``joint/2`` before ``joint/10``), as a reader looks them up."""
    parts = frame["id"].str.rsplit("/", n=1)
    return frame.assign(_family=parts.str[0], _rank=parts.str[1].astype(int)).sort_values(
        ["region", "_family", "_rank"], kind="stable").drop(columns=["_family", "_rank"])


def cmd_catalogue(args: argparse.Namespace) -> int:
    """Print a run's directions (all, or those matching a pandas query)."""
    import pandas as pd

    from localedit.store import catalogue

    cat = catalogue.open(args.run)
    frame = cat.frame
    if args.subcommand == "show":
        print(cat)
    else:
        try:
            # Evaluated first: pandas' query() indexes with a non-boolean result ("rank") instead of refusing it.
            keep = frame.eval(args.expr)
            if not (isinstance(keep, pd.Series) and pd.api.types.is_bool_dtype(keep)):
                raise TypeError("the query must be a condition, true or false for each direction")
        except (SyntaxError, NameError, TypeError, ValueError) as err:  # ValueError: "region = 'eyes'" (an assignment)
            raise ValueError(f"bad query {args.expr!r}: {err}; columns: {', '.join(frame.columns)}") from err
        frame = frame[keep]
    frame = _in_id_order(frame)
    if args.json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(frame[CATALOGUE_COLUMNS].to_string(index=False, float_format="%.3f") if len(frame) else "(no directions)")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """Apply one catalogue direction to image files and write a strip (one row per image)."""
    from localedit.bundled.samples import load_image
    from localedit.core.models import load_model
    from localedit.store import catalogue

    out = check_output_file(args.out, ".png")
    cat = catalogue.open(args.catalogue)
    cat.row(args.direction)  # an unknown id fails before the model loads
    largest = cat.edit.alpha_range[1]
    if args.alphas and max(map(abs, args.alphas)) > largest:
        warnings.warn(f"|alpha| above {largest} (the largest strength this catalogue's evaluation may choose) "
                      "moves h far off the model's data: expect noise, not an edit")
    model = load_model(args.model or cat.attrs["model_source"])
    cat.check_model(model)
    images = torch.stack([load_image(path, model.resolution) for path in args.image])
    print(f"wrote {_direction_strip(cat, model, args.direction, images, args.alphas, out)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline on bundled data: mine the bundled samples, then score every top catalogue direction,
    the supervised references and the baseline methods (masked, global, random, LOCO-style x-space, the paper's
    JIVE) at matched strength on held-out samples, and write the run's strips and report.

    Mines with ``localedit.core.settings.BUNDLED_RUN`` (the joint rank fixed at 1; it says why).
    """
    from flows.local_server import pipeline_server

    with pipeline_server():  # one Prefect API for the mining and the evaluation
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from flows.mine import mining_parameters, run_mining
    from localedit.bundled.samples import load_samples
    from localedit.core.models import load_model
    from localedit.evaluation.layout import STRIPS_DIR, strip_path
    from localedit.store import catalogue

    summary = run_mining(runner=args.runner, out=args.out, model=args.model, images="bundled",
                         **mining_parameters(BUNDLED_RUN))
    _print_mining(summary)
    cat = catalogue.open(summary.run_dir)
    model = load_model(args.model)
    cat.check_model(model)
    heldout = load_samples("heldout")[0][: args.heldout]
    if not len(cat):
        print(f"no direction is shared by {cat.attrs['min_support']} images at squared cosine "
              f">= {cat.attrs['threshold']}: no strips (mine with a lower --threshold to see weaker ones)")
    evaluate = bool(len(cat) and args.evaluate_heldout)  # then the evaluation strips these directions at matched strength
    for direction in () if evaluate else cat.frame.query("rank == 0")["id"]:
        path = strip_path(summary.run_dir, direction)
        print(f"strip: {_direction_strip(cat, model, direction, heldout, None, path)}")
    if evaluate:
        from flows.evaluate import evaluate_directions
        from localedit.evaluation.report import text_table

        result = evaluate_directions(summary.run_dir, heldout=args.evaluate_heldout, baselines=args.baselines)
        print(text_table(result.methods))
        print(f"catalogue: {Path(summary.run_dir) / 'catalogue.parquet'}")
        print(f"strips: {Path(summary.run_dir) / STRIPS_DIR}")
        print(f"report: {result.report}")
    return 0


_METHOD_HELP = {"regions": "preset names or a regions JSON file", "t": "timestep where the Jacobians are taken",
                "k": "subspace size per region", "num_steps": "DDIM steps"}


def _method_options(parser: argparse.ArgumentParser, prefix: str, settings: MiningSettings = MINING,
                    names=("regions", "t", "k", "num_steps")) -> None:
    """The method's options shared by ``demo``, ``mine`` and ``evaluate``, defaults from ``settings``."""
    for name in names:
        default = getattr(settings, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{prefix}{_METHOD_HELP[name]} (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="localedit", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="mine and edit one image in memory")
    demo.add_argument("--model", default=None, help="bundled (default), a diffusers folder, or a hub id")
    demo.add_argument("--image", default=None, help="an image file (default: a bundled sample)")
    _method_options(demo, "", names=("regions", "t", "k"))
    demo.add_argument("--alphas", type=_alphas, default=list(EDITING.alphas),
                      help="strengths (default: %s)" % ",".join(map(str, EDITING.alphas)))
    demo.add_argument("--out", default="out/demo", help="folder for the strips (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser("evaluate", help="locality and fidelity of directions at matched strength")
    evaluate.add_argument("run", nargs="?", help="a mined run directory (omit with --compare for the bundled comparison)")
    evaluate.add_argument("--compare", action="store_true", help="also evaluate the baseline methods")
    evaluate.add_argument("--json", action="store_true", help="print the per-method summary as JSON")
    evaluate.add_argument("--model", default=WITHOUT_A_RUN["model"],
                          help="without a run: bundled (default), a diffusers folder, or a hub id")
    evaluate.add_argument("--sources", type=int, default=EVALUATION.n_source,
                          help="the first N images of the run (without a run: of the bundled mining subset); "
                               "directions are matched to the target strength on them and baselines mined on them "
                               "(default: %(default)s)")
    evaluate.add_argument("--heldout", type=int, default=EVALUATION.n_heldout,
                          help="held-out images to transfer to (default: %(default)s)")
    evaluate.add_argument("--target", type=float, default=EVALUATION.target,
                          help="RMS pixel change every direction is matched to (default: %(default)s)")
    _method_options(evaluate, "without a run: ", BUNDLED_RUN, ("regions", "num_steps"))
    evaluate.add_argument("--joint-rank", type=int, default=WITHOUT_A_RUN["joint_rank"],
                          help="without a run: JIVE joint rank (default %(default)s, as `localedit run` mines: on the "
                               "bundled model the angles alone find no joint direction); -1: chosen from the angles")
    evaluate.add_argument("--out", default=WITHOUT_A_RUN["out"], help="without a run: where results and report go")
    evaluate.set_defaults(func=cmd_evaluate)

    report = sub.add_parser("report", help="write a run's self-contained report.html")
    report.add_argument("run", help="an evaluated run directory (after `localedit evaluate RUN`)")
    report.set_defaults(func=cmd_report)

    mine = sub.add_parser("mine", help="mine a direction catalogue over many images (Prefect flow; resumable)")
    mine.add_argument("--model", default="bundled", help="bundled (default), a diffusers folder, or a hub id")
    source = mine.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of images at the model's resolution, or 'bundled'")
    source.add_argument("--samples", type=int, help="mine on this many images sampled from the model")
    mine.add_argument("--seed", type=int, default=MINING.seed, help="seed of the sampled images (default: %(default)s)")
    _method_options(mine, "")
    mine.add_argument("--joint-rank", type=int, default=MINING.jive["joint_rank"],
                      help="JIVE joint rank (default: from subspace angles)")
    mine.add_argument("--individual-rank", type=int, default=MINING.jive["individual_ranks"],
                      help="JIVE individual rank per region (default: from subspace angles; 0: JIVE gives no individual "
                           "directions, the catalogue's local ones then come from our other families)")
    mine.add_argument("--paper-jive", action="store_true",
                      help="JIVE over the regions only, as in the paper (default: each region's complement is one "
                           "more block, which keeps individual directions more local)")
    mine.add_argument("--precision", choices=PRECISIONS, default=MINING.precision,
                      help="of the Jacobian products: bf16 or fp16 for a GPU worker's tensor cores, at <= 1 degree "
                           "of subspace angle (default: %(default)s)")
    mine.add_argument("--threshold", type=float, default=CATALOGUE.threshold,
                      help="squared cosine at which an image's subspace counts as containing a direction "
                           "(default: %(default)s)")
    mine.add_argument("--min-support", type=int, default=CATALOGUE.min_support,
                      help="images that must contain a catalogue direction (default: %(default)s)")
    mine.add_argument("--edit-schedule", choices=EDIT_SCHEDULES, default=EDITING.schedule,
                      help="how the catalogue's directions are applied (stored with it, so `localedit edit` and the "
                           "evaluation apply them alike): at every reverse step, or while t >= --t-edit "
                           "(default: %(default)s)")
    mine.add_argument("--t-edit", type=int, default=None,
                      help=f"with --edit-schedule from_t_edit: the last timestep edited (default: {EDITING.t_edit})")
    mine.add_argument("--runner", choices=("local", "dask"), default="local",
                      help="local: tasks in this process; dask: a LocalCluster or --dask-address")
    mine.add_argument("--dask-address", default=None, help="scheduler of an existing cluster, e.g. tcp://host:8786")
    mine.add_argument("--workers", type=int, default=None,
                      help="LocalCluster worker processes; they split the cores, each running one task per core "
                           "(default: as Dask splits them, one worker per core up to 4 cores; with --gpu 1)")
    mine.add_argument("--gpu", action="store_true", help="model-heavy tasks ask Dask for a GPU worker resource")
    mine.add_argument("--out", required=True,
                      help="run directory (resumed if it holds a run with the same settings); strftime %%-codes "
                           "are expanded, e.g. runs/%%Y-%%m-%%d (write %%%% for a literal %%)")
    mine.set_defaults(func=cmd_mine)

    cat = sub.add_parser("catalogue", help="list a run's directions")
    cat_sub = cat.add_subparsers(dest="subcommand", required=True)
    show = cat_sub.add_parser("show", help="every direction")
    show.add_argument("run")
    query = cat_sub.add_parser("query", help="directions matching a pandas query, e.g. \"region == 'eyes'\"")
    query.add_argument("run")
    query.add_argument("expr")
    for parser_ in (show, query):
        parser_.add_argument("--json", action="store_true", help="all columns as JSON records")
        parser_.set_defaults(func=cmd_catalogue)

    edit = sub.add_parser("edit", help="apply a catalogue direction to images and write a strip")
    edit.add_argument("--catalogue", required=True, help="a mined run directory")
    edit.add_argument("--direction", required=True, help="a direction id, e.g. eyes/individual/0")
    edit.add_argument("--image", required=True, nargs="+", help="image files at the model's resolution")
    edit.add_argument("--alphas", type=_alphas, default=None,
                      help="strengths (default: the catalogue's, %s for a new one)" % ",".join(map(str, EDITING.alphas)))
    edit.add_argument("--model", default=None, help="default: the model the catalogue was mined on")
    edit.add_argument("--out", required=True, help="PNG to write")
    edit.set_defaults(func=cmd_edit)

    run = sub.add_parser("run", help="the whole pipeline on the bundled model and samples (`make run`)")
    run.add_argument("--model", default="bundled", help="bundled (default), a diffusers folder, or a hub id")
    run.add_argument("--runner", choices=("local", "dask"), default="local",
                     help="local: mining tasks in this process (default); dask: on a LocalCluster")
    run.add_argument("--heldout", type=int, default=EVALUATION.strip_images, help="held-out samples in each edit strip (default: %(default)s)")
    run.add_argument("--evaluate-heldout", type=int, default=EVALUATION.n_heldout,
                     help="held-out samples every direction is scored on for the report (0: no evaluation)")
    run.add_argument("--no-baselines", dest="baselines", action="store_false",
                     help="score only the run's own directions and the references, not the baseline methods")
    run.add_argument("--out", default="out/run", help="run directory; an existing one is resumed (default: %(default)s)")
    run.set_defaults(func=cmd_run)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """One line, which on a terminal does not run on from a progress bar's (``localedit.utils.console.line_start``).
    A format, not a ``showwarning``: replacing that would hide the warnings from ``warnings.catch_warnings``."""
    return f"{line_start()}localedit: warning: {' '.join(str(message).split())}\n"


def _error(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err  # KeyError's str() adds quotes
    return f"localedit: error: {' '.join(str(text).split())}"


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input (``BAD_INPUT``) is one line on stderr and exit status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    # Prefect still records every run and task log on its server (and UI); the console shows warnings,
    # the progress bars and the summary. Set the variable yourself to see Prefect's INFO lines.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    torch.set_grad_enabled(True)
    warnings.formatwarning = _one_line_warning
    # A dependency's notice, not ours: shown as "localedit: warning" it read as if localedit were deprecated.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")  # diffusers'
    main_thread = threading.current_thread() is threading.main_thread()
    stops: list[int] = []

    def interrupt(signum, frame):
        stops.append(signum)
        raise KeyboardInterrupt

    new_command()
    if main_thread:  # SIGTERM stops a command like Ctrl-C (flows/stopping.py: within seconds, mid-run)
        previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.func(args)
    except KeyboardInterrupt:
        signum = stops[0] if stops else signal.SIGINT
        say_stopped(signum)
        return 128 + signum
    except BAD_INPUT as err:
        print(_error(err), file=sys.stderr)
        return 2
    except OSError as err:  # the disk or the network, not the input: one line too, but status 1
        print(_error(err), file=sys.stderr)
        return 1
    finally:
        if main_thread:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
