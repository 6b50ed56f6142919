"""Pipeline benchmark: image-region pairs mined per minute, how busy the cores are, and what orchestration costs.

Runs ``flows/mine.py`` on the bundled model over N images sampled from it, once per runner
(in process; the flow's default Dask ``LocalCluster``, split as Dask splits the cores, and one of 1 worker), against
a loopback Prefect server of its own (Dask workers are separate processes and report their task runs to it). Every run is
a fresh child process, so each pays the same start-up and its CPU time (Dask workers'
included: they are its children) is its own. ``--baseline REF`` adds a run of the pipeline as
it was at git revision REF (in process; the tree is exported to a temporary folder), so old
and new are measured in the same invocation, minutes apart: on a shared machine only such
ratios mean anything.

Per run: pairs per minute; ``core_utilisation`` = CPU seconds of the run's processes /
(wall seconds x cores); ``machine_busy``, the same share for every process on the machine (what
others took is the difference); the share of the flow's wall time with no task running
(orchestration); the share of task-run time outside task bodies (Prefect's own work, model
loads, store reads and writes, a task waiting for its upstream; in the per-block and
lock-holding pipelines, mostly waiting for the Jacobian lock); peak RSS of the largest process; and
``largest_angle_deg``, the largest principal angle between its subspaces and the reference run's (the old
in-process run with ``--baseline``, else the new one; same images and blocks), so speed is never bought
with accuracy.

    python benchmarks/pipeline.py --quick --json                # 6 images, in process vs Dask: a few minutes
    python benchmarks/pipeline.py --quick --baseline main --json
    python benchmarks/pipeline.py                               # 16 and 64 images, local, dask, dask:1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from uuid import UUID

from flows.local_server import loopback_server

REPO = Path(__file__).resolve().parent.parent
REGIONS = "eyes,mouth"
QUICK = {"images": "6", "runners": "local,dask"}
FULL = {"images": "16,64", "runners": "local,dask,dask:1"}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


CATALOGUE_TASK = "build-catalogue"


def stage_seconds(runs: list[tuple[str, float, float]]) -> tuple[float, float]:
    """(mining, catalogue) seconds of a flow's task runs (name, start, end): mining from the first start to the
    last end of the per-image tasks (inversion, subspaces and splits; before, subspaces and splits apart), catalogue the build's own runs."""
    per_image = [(a, b) for name, a, b in runs if name.startswith(("invert-", "image-", "subspaces-", "split-"))]
    mining = max(b for _, b in per_image) - min(a for a, _ in per_image) if per_image else 0.0
    return mining, sum(b - a for name, a, b in runs if name.startswith(CATALOGUE_TASK))


def task_intervals(flow_run_id: str) -> tuple[tuple[float, float], list[tuple[str, float, float]]]:
    """The flow run's (start, end) and every task run's (name, start, end), in epoch seconds, as the server
    recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs, page = [], 200
    with get_client(sync_client=True) as client:
        flow = client.read_flow_run(UUID(flow_run_id))
        flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        while True:
            batch = client.read_task_runs(flow_run_filter=flow_filter, limit=page, offset=len(runs))
            runs += batch
            if len(batch) < page:
                break
    spans = [(r.name, r.start_time.timestamp(), r.end_time.timestamp()) for r in runs if r.start_time and r.end_time]
    return (flow.start_time.timestamp(), flow.end_time.timestamp()), spans


def run_folder(workdir: Path, version: str, runner: str, n: int, round_: int) -> Path:
    """Where one run of the invocation mines (the accuracy figure finds the reference run here)."""
    return workdir / f"{version}-{runner}-{n}-{round_}"


def largest_angle_deg(run_dir: Path, reference: Path) -> float:
    """Largest principal angle, in degrees, between two runs' subspaces of the same image and block, over every
    image and block: the accuracy a version or a runner costs (issue 14's bar: within 1 degree of the reference).
    Zero columns (padding, where fewer than k directions were found) are left out. ValueError if the runs
    differ in images, blocks, h or k."""
    import numpy as np
    import zarr

    from localedit.core.subspace import principal_angles
    from localedit.store.runs import STORE_NAME

    a, b = (zarr.open_group(str(d / STORE_NAME), mode="r")["subspace_basis"][:] for d in (run_dir, reference))
    if a.shape != b.shape:
        raise ValueError(f"{run_dir} has subspaces of shape {a.shape}, {reference} {b.shape}")
    worst = 0.0
    for A, B in zip(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])):
        A, B = (X[:, np.linalg.norm(X, axis=0) > 0] for X in (A, B))
        worst = max(worst, float(principal_angles(A, B).max()))
    return worst


def bundled_or_random(workdir: Path) -> tuple[str, str]:
    """The bundled model (as a path, so a baseline tree loads the same weights) when trained, else its
    architecture with random weights saved to ``workdir``. Returns the model argument and a description."""
    from diffusers import UNet2DModel

    from localedit.bundled.training import TrainConfig
    from localedit.core.models import BUNDLED_MODEL_DIR, from_unet, save_model

    if (BUNDLED_MODEL_DIR / "config.json").exists():
        return str(BUNDLED_MODEL_DIR), "the bundled model (trained)"
    save_model(from_unet(UNet2DModel(**TrainConfig().unet_config())), workdir / "random-bundled")
    return str(workdir / "random-bundled"), "the bundled architecture, random weights (trained model not yet available)"


def export_tree(ref: str, dest: Path) -> Path:
    """The repository's files at git revision ``ref``, written to ``dest`` (no history, no work tree state)."""
    archive = dest.with_suffix(".tar")
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have ended (Dask workers, once closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat (busy: not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # guest time is already inside user time
    return total - values[3] - values[4], total


def child(spec: dict) -> dict:
    """In the child process: one ``run_mining`` call, timed, with the CPU it and its children used."""
    from flows.mine import run_mining

    cpu, (busy, ticks), start, called = _cpu_seconds(), _machine_jiffies(), time.perf_counter(), time.time()
    summary = run_mining(**spec)
    wall = time.perf_counter() - start
    busy_after, ticks_after = _machine_jiffies()
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    if dataclasses.is_dataclass(summary):  # a MiningResult; a --baseline revision may return a dict
        summary = dataclasses.asdict(summary)
    return {"summary": summary, "wall_seconds": wall, "called_at": called, "cpu_seconds": _cpu_seconds() - cpu,
            "machine_busy": (busy_after - busy) / max(1, ticks_after - ticks), "peak_rss_mb": rss / 1024}


def runner_arguments(runner: str) -> dict:
    """``local``, ``dask`` (the flow's default worker count) or ``dask:N`` -> ``run_mining`` arguments."""
    name, _, workers = runner.partition(":")
    return {"runner": name, **({"workers": int(workers)} if workers else {})}


def mine(model: str, n: int, runner: str, out: Path, tree: Path = REPO, version: str = "new") -> dict:
    """One mining run in a fresh child process on ``tree``'s code; its throughput and where its time went."""
    spec = {**runner_arguments(runner), "out": str(out), "model": model, "samples": n, "regions": REGIONS,
            "progress": False}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=tree,
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{version} {runner} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    summary, wall = result["summary"], result["wall_seconds"]
    (flow_start, flow_end), named = task_intervals(summary["flow_run_id"])
    spans = [(a, b) for _, a, b in named]
    mining_seconds, catalogue_seconds = stage_seconds(named)
    flow_wall = flow_end - flow_start
    # Mining task runs only: the task bodies' seconds count the mining tasks, not the catalogue build.
    in_runs = sum(b - a for name, a, b in named if not name.startswith(CATALOGUE_TASK))
    pairs = n * len(REGIONS.split(","))
    cores = len(os.sched_getaffinity(0))
    return {
        "version": version, "runner": runner, "images": n, "pairs": pairs,
        "pairs_per_minute": pairs / wall * 60,
        "wall_seconds": wall,
        # The per-image stages alone (the catalogue build after them changed between versions).
        "mining_pairs_per_minute": pairs / mining_seconds * 60 if mining_seconds else None,
        "mining_seconds": mining_seconds,
        "catalogue_seconds": catalogue_seconds,
        "cpu_seconds": result["cpu_seconds"],
        "core_utilisation": result["cpu_seconds"] / (wall * cores),
        "machine_busy": result["machine_busy"],
        "peak_rss_mb": result["peak_rss_mb"],
        "flow_run_seconds": flow_wall,
        # From the run_mining call to the first task run's start: plan, flow run, and on Dask the cluster's start.
        "until_first_task_seconds": min(a for a, _ in spans) - result["called_at"],
        "outside_tasks_share": 1 - _union_seconds(spans) / flow_wall,
        # Of the mining task runs: Prefect's own work, store I/O, and (the per-block and lock-holding paths) lock waits.
        "task_run_share_outside_bodies": 1 - summary["task_seconds"] / in_runs,
        "task_body_seconds": summary["task_seconds"],
        "task_runs": len(spans),
        "tasks": summary["tasks"],
    }


def medians(rows: list[dict]) -> list[dict]:
    """One row per (version, runner, images): with ``--repeat``, each figure the median over its rounds (this
    machine's speed drifts by up to 1.5x within minutes, so rounds alternate the runners)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["version"], r["runner"], r["images"]), []).append(r)
    return [{**group[0], **{key: statistics.median(r[key] for r in group) for key, value in group[0].items()
                            if isinstance(value, float)}, "rounds": len(group)} for group in groups.values()]


def ratios(rows: list[dict]) -> dict:
    """Per image count, throughput ratios of runs measured in this invocation (new in-process is the base;
    repeated runs by their medians)."""
    rows = medians(rows)
    out = {}
    for key, suffix in (("pairs_per_minute", ""), ("mining_pairs_per_minute", "_mining")):
        by = {(r["version"], r["runner"], r["images"]): r[key] for r in rows if r.get(key)}
        for n in sorted({r["images"] for r in rows}):
            base = by.get(("new", "local", n))
            if base is None:
                continue
            entry = out.setdefault(n, {})
            entry.update({f"{runner.replace(':', '_')}_over_inprocess{suffix}": rate / base
                          for (version, runner, m), rate in by.items()
                          if m == n and version == "new" and runner != "local"})
            if ("old", "local", n) in by:
                entry[f"new_over_old{suffix}"] = base / by["old", "local", n]
    return out


def headline(rows: list[dict]) -> dict:
    """The figures the issue asks for, from the largest image count: new in-process core utilisation,
    Dask over in-process (the flow's default worker count if it ran, else the best Dask run), new over
    old pairs per minute."""
    n = max(r["images"] for r in rows)
    pick = {(r["version"], r["runner"]): r for r in medians(rows) if r["images"] == n}
    local = pick["new", "local"]
    figures = {"images": n, "core_utilisation": local["core_utilisation"], "machine_busy": local["machine_busy"]}
    dask = [r for (version, runner), r in pick.items() if version == "new" and runner.startswith("dask")]
    if dask:
        chosen = pick.get(("new", "dask")) or max(dask, key=lambda r: r["pairs_per_minute"])
        figures["dask_runner"] = chosen["runner"]
        figures["dask_over_inprocess"] = chosen["pairs_per_minute"] / local["pairs_per_minute"]
    if ("old", "local") in pick:
        figures["new_over_old"] = pick["new", "local"]["pairs_per_minute"] / pick["old", "local"]["pairs_per_minute"]
        figures["old_core_utilisation"] = pick["old", "local"]["core_utilisation"]
    figures.update({name: value for name, value in ratios(rows).get(n, {}).items() if name.endswith("_mining")})
    angles = [r["largest_angle_deg"] for r in rows if "largest_angle_deg" in r]
    if angles:  # over every run of every image count
        figures["largest_angle_deg"] = max(angles)
    return figures


def markdown(rows: list[dict], described: str) -> str:
    lines = [f"Model: {described}; regions {REGIONS}.", "",
             "| version | runner | images | pairs / min | wall (s) | mining stages: pairs / min | catalogue (s) | "
             "core utilisation | machine busy | peak RSS (MB) | outside tasks | in task runs, outside bodies | "
             "task bodies (s) | largest angle (deg) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['runner']} | {r['images']} | {r['pairs_per_minute']:.1f} | "
                     f"{r['wall_seconds']:.0f} | {r['mining_pairs_per_minute'] or 0:.1f} | {r['catalogue_seconds']:.0f} | "
                     f"{r['core_utilisation']:.2f} | {r['machine_busy']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['outside_tasks_share']:.1%} | "
                     f"{r['task_run_share_outside_bodies']:.1%} | {r['task_body_seconds']:.0f} | "
                     f"{r.get('largest_angle_deg', float('nan')):.5f} |")
    lines.append("")
    for n, entry in ratios(rows).items():
        lines.append(f"{n} images: " + ", ".join(f"{name} = {value:.2f}" for name, value in entry.items()) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['images']} images, runners {QUICK['runners']} (a few minutes)")
    parser.add_argument("--images", default=None, help=f"comma-separated image counts (default {FULL['images']})")
    parser.add_argument("--runners", default=None,
                        help=f"comma-separated from local, dask, dask:N (default {FULL['runners']})")
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also run the pipeline as it was at this git revision (in process)")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every run, the order reversed every other round; ratios from the medians "
                             "(default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    defaults = QUICK if args.quick else FULL
    images = [int(x) for x in (args.images or defaults["images"]).split(",")]
    runners = (args.runners or defaults["runners"]).split(",")
    with tempfile.TemporaryDirectory(prefix="localedit-pipeline-") as tmp:
        workdir = Path(tmp)
        with loopback_server(workdir / "prefect-home"):
            model, described = (args.model, args.model) if args.model else bundled_or_random(workdir)
            baseline = export_tree(args.baseline, workdir / "baseline") if args.baseline else None
            rows = []
            for n in images:
                plan = [("new", runner, REPO) for runner in runners]
                if baseline:
                    plan.insert(1, ("old", "local", baseline))  # beside the new in-process run it is compared with
                outs = []
                for round_ in range(args.repeat):
                    # Odd rounds run the plan backwards, so no runner always goes first on a machine whose speed drifts.
                    for version, runner, tree in plan if round_ % 2 == 0 else plan[::-1]:
                        outs.append(run_folder(workdir, version, runner, n, round_))
                        rows.append({**mine(model, n, runner, outs[-1], tree, version), "round": round_})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                # Accuracy: every run's subspaces against the old in-process run's (else the new one's), same images.
                reference = run_folder(workdir, "old" if baseline else "new", "local", n, 0)
                if reference.exists():
                    for row, out in zip(rows[-len(outs):], outs):
                        row["largest_angle_deg"] = largest_angle_deg(out, reference)
    machine = {"cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "baseline": args.baseline}
    if args.json:
        print(json.dumps({**headline(rows), "model": described, "machine": machine,
                          "ratios": ratios(rows), "runs": rows}, indent=2))
    else:
        print(markdown(rows, described))
        print(json.dumps({"machine": machine, **headline(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
