"""Pipeline benchmark: image-region pairs mined per minute by the mining flow, and what orchestration costs.

Runs ``flows/mine.py`` on the bundled model over N images sampled from it (16 and 64 by default),
in process and on a 2-worker Dask ``LocalCluster``, against a loopback Prefect server of its own
(Dask workers are separate processes and report their task runs to it). From the task runs'
start and end times it measures the share of the flow's wall time during which no task ran
(submission, scheduling, the catalogue: orchestration overhead), and the framework's time
inside task runs beyond the task bodies.

    python benchmarks/pipeline.py                 # 16 and 64 images, in process and on Dask
    python benchmarks/pipeline.py --images 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

from flows.local_server import loopback_server

REGIONS = "eyes,mouth"


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def task_intervals(flow_run_id: str) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """The flow run's (start, end) and every task run's, in epoch seconds, as the server recorded them."""
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
    spans = [(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs if r.start_time and r.end_time]
    return (flow.start_time.timestamp(), flow.end_time.timestamp()), spans


def bundled_or_random(workdir: Path) -> tuple[str, str]:
    """The bundled model when trained, else its architecture with random weights saved to ``workdir``.

    Returns the model argument for the flow and a description for the report.
    """
    from diffusers import UNet2DModel

    from localedit.models import BUNDLED_MODEL_DIR, from_unet, save_model
    from localedit.training import TrainConfig

    if (BUNDLED_MODEL_DIR / "config.json").exists():
        return "bundled", "the bundled model (trained)"
    save_model(from_unet(UNet2DModel(**TrainConfig().unet_config())), workdir / "random-bundled")
    return str(workdir / "random-bundled"), "the bundled architecture, random weights (trained model not yet available)"


def mine(model: str, n: int, runner: str, out: Path) -> dict:
    """One mining run; its throughput and where its wall time went."""
    from flows.mine import run_mining

    start = time.perf_counter()
    summary = run_mining(runner=runner, workers=2 if runner == "dask" else None, out=str(out), model=model,
                         samples=n, regions=REGIONS, progress=False)
    end_to_end = time.perf_counter() - start
    (flow_start, flow_end), spans = task_intervals(summary["flow_run_id"])
    flow_wall = flow_end - flow_start
    in_runs = sum(b - a for a, b in spans)
    pairs = n * len(REGIONS.split(","))
    return {
        "runner": runner, "images": n, "pairs": pairs,
        "pairs_per_minute": pairs / end_to_end * 60,
        "end_to_end_seconds": end_to_end,
        "flow_run_seconds": flow_wall,
        "outside_tasks_share": 1 - _union_seconds(spans) / flow_wall,
        # Where the time outside tasks goes: before the first task run, after the last one
        # (building the catalogue), and the gaps in between (scheduling).
        "before_first_task_seconds": min(a for a, _ in spans) - flow_start,
        "after_last_task_seconds": flow_end - max(b for _, b in spans),
        # Prefect's own work in a task run, and (in process) waiting for the Jacobian lock.
        "task_run_share_outside_bodies": 1 - summary["task_seconds"] / in_runs,
        "task_body_seconds": summary["task_seconds"],
        "task_runs": len(spans),
        "tasks": summary["tasks"],
    }


def markdown(rows: list[dict], described: str) -> str:
    lines = [f"Model: {described}; regions {REGIONS}.", "",
             "| runner | images | pairs | pairs / min | end to end (s) | flow run (s) | outside tasks | "
             "of which before first / after last task (s) | in task runs, outside bodies | task bodies (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runner']} | {r['images']} | {r['pairs']} | {r['pairs_per_minute']:.1f} | "
                     f"{r['end_to_end_seconds']:.0f} | {r['flow_run_seconds']:.0f} | {r['outside_tasks_share']:.1%} | "
                     f"{r['before_first_task_seconds']:.1f} / {r['after_last_task_seconds']:.1f} | "
                     f"{r['task_run_share_outside_bodies']:.1%} | {r['task_body_seconds']:.0f} |")
    by = {(r["runner"], r["images"]): r for r in rows}
    lines.append("")
    for n in sorted({r["images"] for r in rows}):
        if ("local", n) in by and ("dask", n) in by:
            ratio = by["dask", n]["pairs_per_minute"] / by["local", n]["pairs_per_minute"]
            lines.append(f"{n} images: Dask / in-process throughput = {ratio:.2f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="16,64", help="comma-separated image counts (default 16,64)")
    parser.add_argument("--runners", default="local,dask", help="comma-separated from local, dask")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="localedit-pipeline-") as tmp:
        workdir = Path(tmp)
        with loopback_server(workdir / "prefect-home"):
            model, described = (args.model, args.model) if args.model else bundled_or_random(workdir)
            rows = []
            for n in (int(x) for x in args.images.split(",")):
                for runner in args.runners.split(","):
                    rows.append(mine(model, n, runner, workdir / f"{runner}-{n}"))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"model": described, "machine": machine, "runs": rows}, indent=2))
    else:
        print(markdown(rows, described))
        print(json.dumps({"machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
