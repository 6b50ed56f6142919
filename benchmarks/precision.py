"""Precision benchmark: what running the masked Jacobian's products in fp16 or bf16 costs in subspace angle and time.

Issue 14 item 3(d): reduced precision on GPU workers "where accuracy allows". The angle is a
property of the arithmetic, so it is measured here on the CPU with ``torch.autocast`` (fp16 has
TF32's 10-bit mantissa and also rounds stored activations, so it bounds TF32's cost); the speed
is a GPU figure this CPU cannot give (no bf16 matrix units). Each problem is
``benchmarks/subspace.py``'s (random x_t, an "eyes" band mask); the reference is the fp32 engine
converged to 1e-7. Figures: the largest principal angle to the reference's top 1, k/2 and k
directions, singular values' largest relative error, iterations and seconds of the default-tolerance
run per precision.

    env PYTHONPATH=. python benchmarks/precision.py --model bundled --seeds 0,1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.subspace import long_run_reference, make_problem, max_angle_deg
from localedit.core.jacobian import AUTOCAST_DTYPES, subspaces


def measure(model: str, k: int, seed: int) -> dict:
    """Per precision: angles (degrees) to the fp32 reference, singular values' error, iterations, seconds."""
    p = make_problem(model, k=k, seed=seed)
    reference, reference_values = long_run_reference(p)
    out = {}
    for name, precision in AUTOCAST_DTYPES.items():
        start = time.perf_counter()
        (found,) = subspaces(p.model, p.state, p.mask[None], k=k, precision=precision)
        seconds = time.perf_counter() - start
        out[name] = {"max_angle_deg": {str(j): max_angle_deg(found.basis[:, :j], reference[:, :j])
                                       for j in sorted({1, max(1, k // 2), k})},
                     "singular_value_rel_err": float(((found.singular_values - reference_values[:k]).abs()
                                                      / reference_values[:k]).max()),
                     "iterations": found.iterations, "seconds": seconds}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="tiny, bundled or celebahq256 (default %(default)s)")
    parser.add_argument("--k", type=int, default=8, help="subspace size (default %(default)s)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated problem seeds (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {seed: measure(args.model, args.k, seed) for seed in seeds}
    worst = {name: max(max(r[name]["max_angle_deg"].values()) for r in runs.values()) for name in AUTOCAST_DTYPES}
    report = {"model": args.model, "k": args.k, "worst_angle_deg": worst, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "load_average": os.getloadavg()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'seed':>4} {'precision':>9} {'angles to fp32 ref (top j: deg)':>40} {'sv err':>8} {'iters':>5} {'s':>6}")
    for seed, run in runs.items():
        for name, r in run.items():
            angles = ", ".join(f"{j}: {a:.4f}" for j, a in r["max_angle_deg"].items())
            print(f"{seed:>4} {name:>9} {angles:>40} {r['singular_value_rel_err']:8.1e} {r['iterations']:5d} "
                  f"{r['seconds']:6.2f}")
    print("worst angle (deg):", ", ".join(f"{name} {a:.3f}" for name, a in worst.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
