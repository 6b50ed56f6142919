"""Start-up benchmark: ``localedit mine`` timed whole, as a person runs it, per runner and version.

The pipeline benchmark (``benchmarks/pipeline.py``) times ``run_mining`` against one shared
Prefect server, after the process has imported torch: right for throughput, blind to what a
person waits for before the first task. Here every run is the whole command in a fresh process
with no ``PREFECT_API_URL``, so it imports everything and starts its own loopback server, and on
Dask its own ``LocalCluster``, whose worker imports torch, diffusers and Prefect again. The runs
share one ``PREFECT_HOME``, created by an untimed first run (a person's second run finds its
database there). The work is kept small (``--samples`` images, two regions), so the wall time is
mostly start-up and shut-down.
``--baseline REF`` adds the command as it was at git revision REF; runners and versions alternate
within each round, and the ratios are of the medians over ``--repeat`` rounds.

    python benchmarks/startup.py --baseline HEAD~1 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import REGIONS, REPO, export_tree, runner_arguments

SAMPLES = 2


def cli_runner_flags(runner: str) -> list[str]:
    """``local``, ``dask`` or ``dask:N`` -> ``localedit mine`` flags (the pipeline benchmark's ``run_mining`` arguments)."""
    return [text for name, value in runner_arguments(runner).items() for text in (f"--{name}", str(value))]


def timed_mine(tree: Path, runner: str, out: Path, home: Path, samples: int) -> float:
    """Wall seconds of one ``localedit mine`` command on ``tree``'s code, in a fresh process with its own server."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update({"PYTHONPATH": str(tree), "PREFECT_HOME": str(home)})
    command = [sys.executable, "-m", "localedit.cli", "mine", "--samples", str(samples), "--regions", REGIONS,
               "--out", str(out), *cli_runner_flags(runner)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed in {tree}:\n{done.stderr[-3000:]}")
    return wall


def summarise(rows: list[dict]) -> dict:
    """Median wall seconds per version/runner, and their ratios: each over new in process, new over old per runner."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["version"], r["runner"]), []).append(r["wall_seconds"])
    median = {key: statistics.median(values) for key, values in groups.items()}
    base = median.get(("new", "local"))
    ratios = {f"{version}/{runner}_over_new/local": value / base for (version, runner), value in median.items()
              if base and (version, runner) != ("new", "local")}
    ratios.update({f"new_over_old/{runner}": value / median["old", runner] for (version, runner), value in median.items()
                   if version == "new" and ("old", runner) in median})
    return {"median_wall_seconds": {f"{version}/{runner}": value for (version, runner), value in median.items()},
            "wall_ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default="local,dask", help="comma-separated from local, dask, dask:N")
    parser.add_argument("--baseline", default=None, metavar="REF", help="also time the command at this revision")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="images mined per run (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, versions and runners alternating")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="localedit-startup-") as tmp:
        workdir = Path(tmp)
        trees = {"new": REPO, **({"old": export_tree(args.baseline, workdir / "baseline")} if args.baseline else {})}
        home = workdir / "prefect-home"
        timed_mine(REPO, "local", workdir / "warm-up", home, args.samples)  # creates the server's database
        for round_ in range(args.repeat):
            for runner in args.runners.split(","):
                for version, tree in trees.items():
                    name = f"{version}-{runner.replace(':', '_')}-{round_}"
                    wall = timed_mine(tree, runner, workdir / name, home, args.samples)
                    rows.append({"version": version, "runner": runner, "round": round_, "wall_seconds": wall})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = {"samples": args.samples, "regions": REGIONS, "baseline": args.baseline,
               "machine": {"cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()},
               **summarise(rows), "runs": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("| version/runner | median wall (s) |\n|---|---|")
        for key, value in summary["median_wall_seconds"].items():
            print(f"| {key} | {value:.1f} |")
        print(", ".join(f"{key} = {value:.2f}" for key, value in summary["wall_ratios"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
