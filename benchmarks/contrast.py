"""Region-contrast benchmark: the block Krylov engine against a baseline revision's ``contrast_directions``.

On the bundled model, the first ``--images`` mining images are inverted and denoised to x_t at
``--t``; both versions then compute the region-contrast directions (``localedit.core.contrast``)
of the ``--regions`` over those images, alternating old and new ``--repeats`` times in one
process (the machine is shared: alternation spreads its load over both). The baseline's module
is read from git (``--baseline``, default ``main``) and loaded beside the current one, so no
checkout is needed. Reported per version: wall and process CPU seconds per call (median, min,
max); per region and rank: both eigenvalues and their relative difference, |cos| between the
corresponding eigenvectors, and the largest principal angle between the two k-dimensional spans.

    env OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/contrast.py --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from localedit.bundled.samples import load_samples
from localedit.core.contrast import contrast_directions
from localedit.core.ddim import invert
from localedit.core.mining import DEFAULT_STEPS, latent_at
from localedit.core.models import load_model
from localedit.core.regions import resolve_regions
from localedit.core.subspace import principal_angles
from localedit.utils.pixels import to_signed

REPO = Path(__file__).resolve().parent.parent


def baseline_contrast(revision: str):
    """``contrast_directions`` of ``localedit/core/contrast.py`` at ``revision``, loaded as its own module."""
    source = subprocess.run(["git", "show", f"{revision}:localedit/core/contrast.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("contrast_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{revision}:localedit/core/contrast.py", "exec"), module.__dict__)  # noqa: S102 -- ours
    return module.contrast_directions


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare(old, new, names) -> list[dict]:
    rows = []
    for name, (v_old, l_old), (v_new, l_new) in zip(names, old, new):
        r = min(v_old.shape[1], v_new.shape[1])
        span = float(principal_angles(v_old[:, :r], v_new[:, :r]).max()) if r else float("nan")
        for j in range(r):
            rows.append({"region": name, "rank": j, "old_value": float(l_old[j]), "new_value": float(l_new[j]),
                         "value_rel_diff": float((l_new[j] - l_old[j]).abs() / l_old[j].abs()),
                         "abs_cos": float((v_old[:, j] @ v_new[:, j]).abs()), "span_angle_deg": span,
                         "old_pairs": v_old.shape[1], "new_pairs": v_new.shape[1]})
    return rows


def summary(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision whose contrast.py is the old version")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--regions", default="eyes,mouth")
    parser.add_argument("--t", type=int, default=500)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--mu", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old_contrast = baseline_contrast(args.baseline)
    model = load_model("bundled")
    regions = resolve_regions(args.regions.split(","), model.resolution)
    images, _ = load_samples("mine")
    x_T = invert(model, to_signed(images[: args.images].to(model.device)), DEFAULT_STEPS)
    latent = latent_at(model, None, args.t, x_T=x_T)

    versions = {"old": old_contrast, "new": contrast_directions}
    seconds = {name: {"wall": [], "cpu": []} for name in versions}
    results = {}
    for repeat in range(args.repeats):
        order = list(versions) if repeat % 2 == 0 else list(versions)[::-1]
        for name in order:
            found, wall, cpu = timed(versions[name], model, latent.x_t, latent.t, regions, k=args.k, mu=args.mu)
            seconds[name]["wall"].append(wall)
            seconds[name]["cpu"].append(cpu)
            results.setdefault(name, found)
            print(f"repeat {repeat} {name}: wall {wall:.1f} s, cpu {cpu:.1f} s", file=sys.stderr, flush=True)

    rows = compare(results["old"], results["new"], [r.name for r in regions])
    report = {
        "model": "bundled", "images": args.images, "t": latent.t, "regions": [r.name for r in regions],
        "k": args.k, "mu": args.mu, "repeats": args.repeats, "threads": args.threads, "baseline": args.baseline,
        "old": {kind: summary(values) for kind, values in seconds["old"].items()},
        "new": {kind: summary(values) for kind, values in seconds["new"].items()},
        "seconds": seconds, "pairs": rows,
    }
    report["speedup_wall"] = report["old"]["wall"]["median"] / report["new"]["wall"]["median"]
    report["speedup_cpu"] = report["old"]["cpu"]["median"] / report["new"]["cpu"]["median"]
    report["max_span_angle_deg"] = max(row["span_angle_deg"] for row in rows)
    report["max_value_rel_diff"] = max(row["value_rel_diff"] for row in rows)

    print("| version | wall s (median, min-max) | CPU s (median, min-max) |\n|---|---|---|")
    for name in versions:
        w, c = report[name]["wall"], report[name]["cpu"]
        print(f"| {name} | {w['median']:.1f} ({w['min']:.1f}-{w['max']:.1f}) | "
              f"{c['median']:.1f} ({c['min']:.1f}-{c['max']:.1f}) |")
    print(f"speedup: wall {report['speedup_wall']:.1f}x, CPU {report['speedup_cpu']:.1f}x\n")
    print("| region | rank | old eigenvalue | new eigenvalue | rel. difference | abs cos | span angle (deg) |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['region']} | {row['rank']} | {row['old_value']:.6g} | {row['new_value']:.6g} | "
              f"{row['value_rel_diff']:.1e} | {row['abs_cos']:.6f} | {row['span_angle_deg']:.3f} |")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
