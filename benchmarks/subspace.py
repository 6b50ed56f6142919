"""Subspace benchmark: our subspace engine against the published algorithms, in the same run.

All three algorithms find the top-k right singular vectors of one masked Jacobian
J = d(mask * model_output)/dh on the same model, state and mask, in the same process (the U-Net's
output, not converted to the noise prediction: the conversion is a scalar gain, which changes
neither the singular vectors nor the cost):

- ``sequential``: power iteration one vector at a time with deflation (Haas et al.),
  J v by forward-mode ``torch.autograd.functional.jacobian`` of a scalar step, J^T u by autograd.
- ``chunked_jacfwd``: subspace iteration with J V from ``torch.func.jacfwd`` in chunks, U^T J
  from the reverse-mode autograd Jacobian of <u_i, f>, then an SVD (Park et al. / LOCO-Edit).
- ``ours``: ``localedit.core.jacobian.subspaces``.

Each is given the smallest iteration budget whose result lies within ``--target`` degrees
(largest principal angle) of a reference subspace; that run's time is its time to
accuracy. Runs are timed in process CPU time and each gets its own peak-RSS reading. Ratios
between algorithms are the result: absolute seconds depend on the machine and its load.

    python benchmarks/subspace.py --quick --json     # tiny model, < 1 minute
    python benchmarks/subspace.py                    # tiny, bundled, CelebA-HQ-256 architecture
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from diffusers import UNet2DModel
from torch.func import vjp, vmap

from localedit.bundled.training import TrainConfig
from localedit.core.forward_ad import jacfwd, jvp
from localedit.core.hspace import HState, decode, encode
from localedit.core.jacobian import MaskedJacobian, subspaces
from localedit.core.models import BUNDLED_MODEL_DIR, DiffusionModel, from_unet, load_model
from localedit.core.subspace import principal_angles, project_out

# The U-Net of google/ddpm-celebahq-256 (its published config.json), built with random weights.
CELEBAHQ_256 = dict(
    sample_size=256,
    in_channels=3,
    out_channels=3,
    center_input_sample=False,
    time_embedding_type="positional",
    freq_shift=1,
    flip_sin_to_cos=False,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    layers_per_block=2,
    mid_block_scale_factor=1,
    downsample_padding=0,
    act_fn="silu",
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
)

# The test suite's tiny U-Net (tests/conftest.py), restated: the benchmark runs without the tests.
TINY = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, attention_head_dim=4,
)


# ----------------------------------------------------------------------------- the problem


@dataclass
class Problem:
    """One masked Jacobian: f(h) = mask * model_output(h) at a fixed (x_t, t), and the rank k sought."""

    name: str
    model: DiffusionModel
    state: HState
    mask: torch.Tensor
    k: int
    weights: str

    def f(self, h: torch.Tensor) -> torch.Tensor:
        return self.mask * decode(self.model.unet, h, self.state)

    @property
    def dim(self) -> int:
        return self.state.h.numel()

    @property
    def out_numel(self) -> int:
        return self.state.h.shape[0] * self.model.unet.config.out_channels * self.mask.numel()


def random_unet(config: dict, seed: int = 0) -> UNet2DModel:
    """Random weights, perturbed so that no layer is initialised to zero and the output depends on h."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def bundled_model() -> tuple[DiffusionModel, str]:
    """The trained bundled model when present, else its architecture with random weights."""
    if (BUNDLED_MODEL_DIR / "config.json").exists():
        return load_model(), "trained"
    return from_unet(random_unet(TrainConfig().unet_config())), "random (trained model not yet available)"


def make_problem(name: str, k: int, seed: int = 0, size: int | None = None) -> Problem:
    """Random x_t at t=500 and a box mask over the upper middle of the image (an 'eyes' band).

    ``size`` shrinks the random-weight models' images (same layers, less work) for warm-ups.
    """
    if name == "tiny":
        model, weights = from_unet(random_unet({**TINY, "sample_size": size or TINY["sample_size"]})), "random"
    elif name == "bundled":
        model, weights = bundled_model()
    elif name == "celebahq256":
        model, weights = from_unet(random_unet({**CELEBAHQ_256, "sample_size": size or 256})), "random"
    else:
        raise ValueError(f"unknown model {name!r}")
    s = model.resolution
    x_t = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(s, s)
    mask[s // 4 : s // 2, s // 4 : 3 * s // 4] = 1
    return Problem(name, model, encode(model.unet, x_t, 500), mask, k, weights)


# ----------------------------------------------------------------------------- the algorithms


@dataclass
class Found:
    """A k-dimensional subspace (orthonormal columns over flat h) and the work it took."""

    basis: torch.Tensor
    jvps: int
    vjps: int
    forwards: int
    iterations: int


def sequential(p: Problem, budget: int, tol: float = 1e-5, seed: int = 0) -> Found:
    """Power iteration on J^T J one vector at a time, deflated against the vectors found before.

    ``budget`` is the iteration cap per vector (50 in the published code); a vector stops early
    once it moves less than ``tol``. Every J^T u re-runs the forward pass, as autograd must.
    ``iterations`` reports the most any vector took.
    """
    h0 = p.state.h
    zero = torch.zeros((), dtype=h0.dtype)
    g = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    count = Counter()
    for _ in range(p.k):
        B = torch.stack(found, 1) if found else torch.zeros(p.dim, 0)
        v = torch.randn(p.dim, generator=g)
        v = project_out(v, B)
        v = v / v.norm()
        for step_no in range(1, budget + 1):
            step = v.view_as(h0)
            Jv = torch.autograd.functional.jacobian(
                lambda a: p.f(h0 + a * step), zero, strategy="forward-mode", vectorize=True)
            h = h0.detach().requires_grad_(True)
            (JtJv,) = torch.autograd.grad(p.f(h), h, Jv)
            w = JtJv.reshape(-1)
            w = project_out(w, B)
            w = w / w.norm()
            count.update(jvps=1, vjps=1, forwards=1)
            count["iterations"] = max(count["iterations"], step_no)
            moved = float((w - v).norm())
            v = w
            if moved < tol:
                break
        found.append(v)
    return Found(torch.stack(found, 1), **count)


def chunked_jacfwd(p: Problem, budget: int, chunk: int = 4, tol: float = 1e-3, min_iter: int = 10,
                   seed: int = 0) -> Found:
    """Subspace iteration: J V by ``jacfwd`` of a scalar step over chunks of V, V' = U^T J by the
    reverse-mode autograd Jacobian of <u_i, f>, new V from the SVD of V'.

    ``budget`` caps the iterations; the published stopping rule (all entries of V within ``tol``
    of the previous iterate, after ``min_iter`` iterations) may end the run earlier.
    """
    h0 = p.state.h
    zero = torch.zeros((), dtype=h0.dtype)
    g = torch.Generator().manual_seed(seed)
    V = torch.linalg.qr(torch.randn(p.dim, p.k, generator=g)).Q.T  # rows are the vectors
    count = Counter()
    for it in range(budget):
        previous = V
        U = []
        for rows in V.split(chunk):
            vi = rows.view(-1, *h0.shape[1:])
            U.append(jacfwd(lambda a: p.f(h0 + a * vi), randomness="error")(zero))
            count.update(jvps=len(rows), forwards=len(rows))  # jacfwd also evaluates f on the chunk
        U = torch.cat(U)
        Vt = torch.autograd.functional.jacobian(lambda h: (U * p.f(h)).flatten(1).sum(1), h0)
        count.update(vjps=p.k, forwards=1, iterations=1)
        V = torch.linalg.svd(Vt.reshape(p.k, -1), full_matrices=False).Vh
        if it > min_iter and torch.allclose(previous, V, atol=tol):
            break
    return Found(V.T, **count)


@contextmanager
def _counting_products(count: Counter):
    """Count the columns that pass through the engine's batched JVP and VJP."""
    jvp_, vjp_ = MaskedJacobian.jvp, MaskedJacobian.vjp

    def counted_jvp(op, V, *args, **kwargs):
        count.update(jvps=V.shape[0] * V.shape[2])
        return jvp_(op, V, *args, **kwargs)

    def counted_vjp(op, U, *args, **kwargs):
        count.update(vjps=U.shape[0] * U.shape[1])
        return vjp_(op, U, *args, **kwargs)

    MaskedJacobian.jvp, MaskedJacobian.vjp = counted_jvp, counted_vjp
    try:
        yield
    finally:
        MaskedJacobian.jvp, MaskedJacobian.vjp = jvp_, vjp_


def ours(p: Problem, budget: int, tol: float = 0.0, seed: int = 0) -> Found:
    """The library's engine, run for exactly ``budget`` iterations (tol=0)."""
    count = Counter()
    with _counting_products(count):
        (sub,) = subspaces(p.model, p.state, p.mask[None], k=p.k, max_iter=budget, tol=tol, seed=seed)
    return Found(sub.basis, forwards=1, iterations=sub.iterations, **count)


# Each algorithm with the largest budget the benchmark grants it: the published caps for the
# references, and a generous one for ours.
ALGORITHMS: dict[str, tuple[Callable[..., Found], int]] = {
    "sequential": (sequential, 50),
    "chunked_jacfwd": (chunked_jacfwd, 100),
    "ours": (ours, 200),
}


# ----------------------------------------------------------------------------- references


def exact_reference(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors and all singular values from the explicit masked rows of J.

    Only rows inside the mask are non-zero, so J is built from one VJP per masked output
    (plain ``torch.func``, independent of the engine) and decomposed exactly.
    """
    out, pullback = vjp(p.f, p.state.h)
    rows_at = p.mask.expand(out.shape[1:]).flatten().nonzero().squeeze(1)
    J = []
    for idx in rows_at.split(64):
        E = torch.zeros(len(idx), out.numel())
        E[torch.arange(len(idx)), idx] = 1
        J.append(vmap(pullback)(E.view(-1, *out.shape))[0].flatten(1))
    _, S, Vh = torch.linalg.svd(torch.cat(J), full_matrices=False)
    return Vh[: p.k].T, S


def long_run_reference(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """For models too large for the explicit J: a long, tightly converged run of ours."""
    (sub,) = subspaces(p.model, p.state, p.mask[None], k=p.k, max_iter=500, tol=1e-7, oversample=p.k)
    return sub.basis, sub.singular_values


def max_angle_deg(basis: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest principal angle between span(basis) (any columns; orthonormalised here) and span(ref), in degrees."""
    return float(principal_angles(torch.linalg.qr(basis.double()).Q, ref.double()).max())


# ----------------------------------------------------------------------------- measurement


# Runs are timed in CPU seconds of the (single-threaded) process: on a shared machine they
# do not count the time spent waiting for a core, and they equal wall seconds on an idle one.
# ``main`` switches to wall time when torch uses several threads.
clock: Callable[[], float] = time.process_time


def _memory() -> dict[str, int]:
    """Resident-set figures of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmHWM", "VmRSS", "RssFile", "RssShmem")}


@dataclass
class Measured:
    value: object
    seconds: float
    peak_rss: int  # bytes, the process's high-water mark during the run
    # Bytes of the peak above what the process held when the run started, less shared-library and
    # other file pages first touched by the run: the run's own data.
    rss_growth: int


def measure(fn: Callable[[], object]) -> Measured:
    """Run ``fn``: its result, time and peak RSS.

    Freed heap pages are handed back to the OS and the high-water mark is reset first, so the
    peak is this run's own, not left over from earlier runs in the process.
    """
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark to the current RSS
    before = _memory()
    t0 = clock()
    value = fn()
    seconds = clock() - t0
    after = _memory()
    mapped_back = sum(after[key] - before[key] for key in ("RssFile", "RssShmem"))
    return Measured(value, seconds, after["VmHWM"], after["VmHWM"] - before["VmRSS"] - mapped_back)


def best_of(fn: Callable[[], object], repeats: int) -> Measured:
    """The fastest of ``repeats`` runs (load on a shared machine only ever adds time)."""
    runs = [measure(fn) for _ in range(repeats)]
    best = min(runs, key=lambda m: m.seconds)
    best.peak_rss = max(m.peak_rss for m in runs)
    best.rss_growth = max(m.rss_growth for m in runs)
    return best


@dataclass
class ToAccuracy:
    reached: bool
    budget: int
    seconds: float
    angle_deg: float
    found: Found
    peak_rss: int
    rss_growth: int
    probes: list[tuple[int, float]]


def _log_tan(deg: float) -> float:
    return math.log(math.tan(math.radians(min(max(deg, 1e-6), 89.9))))


def time_to_accuracy(p: Problem, name: str, ref: torch.Tensor, target: float, repeats: int) -> ToAccuracy:
    """Smallest budget that reaches ``target`` degrees, and the time of a run with it.

    log tan(angle) falls about linearly with the iterations of all three methods, so the
    budget is predicted from the last two probes (extrapolating, at most 4x further, until a
    probe succeeds; then by regula falsi inside the bracket): a few probe runs suffice. The
    reported time is the best of ``repeats`` runs at that budget, or of the capped run when the
    target is never reached.
    """
    algorithm, cap = ALGORITHMS[name]
    probes: dict[int, tuple[float, Measured]] = {}

    def probe(budget: int) -> bool:
        m = measure(partial(algorithm, p, budget))
        probes[budget] = (max_angle_deg(m.value.basis, ref), m)
        return probes[budget][0] <= target

    def predict(a: int, b: int) -> float:
        """Budget at which the line through probes a and b (in log tan) reaches the target."""
        y_a, y_b = _log_tan(probes[a][0]), _log_tan(probes[b][0])
        return b + (b - a) * (y_b - _log_tan(target)) / (y_a - y_b) if y_a > y_b else 2 * b

    lo, hi = 1, 2
    if probe(lo):
        hi = lo
    elif not probe(hi):
        while hi < cap:
            nxt = min(max(math.ceil(predict(lo, hi)), hi + 1), 4 * hi, cap)
            lo, hi = hi, nxt
            if probe(hi):
                break
    reached = probes[hi][0] <= target
    while reached and hi - lo > 1:
        mid = min(max(math.ceil(predict(lo, hi)), lo + 1), hi - 1)
        lo, hi = (lo, mid) if probe(mid) else (mid, hi)
    angle, first = probes[hi]
    best = min([first] + [measure(partial(algorithm, p, hi)) for _ in range(repeats - 1)], key=lambda m: m.seconds)
    return ToAccuracy(reached, hi, best.seconds, angle, first.value, best.peak_rss, best.rss_growth,
                      sorted((b, a) for b, (a, _) in probes.items()))


def per_iteration(p: Problem, name: str, extra: int, repeats: int) -> tuple[float, Measured]:
    """Seconds per iteration with every early stop disabled: (T(1 + extra) - T(1)) / extra.

    For ``sequential`` one iteration is k single-vector steps, the same k JVPs + k VJPs.
    """
    algorithm, _ = ALGORITHMS[name]
    one = best_of(partial(algorithm, p, 1, tol=0.0), repeats)
    more = best_of(partial(algorithm, p, 1 + extra, tol=0.0), repeats)
    return max(more.seconds - one.seconds, 0.0) / extra, more


def floor_products(p: Problem, width: int) -> float:
    """Seconds for bare ``width`` JVPs + ``width`` VJPs of f, the cheaper of batched and looped.

    The linearisation (one forward pass) is outside the timing, as it is outside our loop.
    """
    h = p.state.h
    V = torch.randn(width, *h.shape)
    _, pullback = vjp(p.f, h)
    push = lambda v: jvp(p.f, (h,), (v,))[1]  # noqa: E731

    t0 = clock()
    U = vmap(push)(V)
    vmap(pullback)(U)
    batched = clock() - t0

    t0 = clock()
    for v in V:
        pullback(push(v))
    looped = clock() - t0
    return min(batched, looped)


# ----------------------------------------------------------------------------- the report


def warm_up(p: Problem) -> None:
    """Run every code path once, so that no timed run pays first-use costs."""
    for algorithm, _ in ALGORITHMS.values():
        algorithm(p, 1)
    floor_products(p, p.k)


def benchmark_model(name: str, k: int, to_accuracy: bool, target: float, repeats: int,
                    log: Callable[[str], None]) -> dict:
    p = make_problem(name, k)
    big = p.model.resolution > 64
    warm_up(make_problem(name, k, size=64) if big else p)
    # Short runs on small models are repeated more: a noisy millisecond weighs more there.
    extra, short_repeats = (1, repeats) if big else (4, max(repeats, 3))
    log(f"[{name}] weights: {p.weights}; h {tuple(p.state.h.shape[1:])} (d={p.dim}), "
        f"output {p.out_numel}, mask {int(p.mask.sum())} px, k={k}")
    report: dict = {
        "model": name, "weights": p.weights, "h_dim": p.dim, "output_size": p.out_numel, "k": k,
        "dense_jacobian_mb": p.out_numel * p.dim * 4 / 2**20, "algorithms": {},
    }
    algs = report["algorithms"]
    if to_accuracy:
        if name == "celebahq256":
            ref, S = measure(partial(long_run_reference, p)).value
            report["reference"] = "long run of ours (tol 1e-7, oversample k)"
        else:
            ref, S = exact_reference(p)
            report["reference"] = "exact SVD of the masked Jacobian"
        report["gap_s_k1_over_s_k"] = float(S[k] / S[k - 1]) if len(S) > k else None
    for alg in ALGORITHMS:
        row = algs[alg] = {}
        if to_accuracy:
            r = time_to_accuracy(p, alg, ref, target, repeats)
            row.update(reached=r.reached, budget=r.budget, seconds_to_target=r.seconds, angle_deg=r.angle_deg,
                       jvps=r.found.jvps, vjps=r.found.vjps, forwards=r.found.forwards,
                       peak_rss_mb=r.peak_rss / 2**20, rss_growth_mb=r.rss_growth / 2**20)
            log(f"[{name}] {alg}: budget {r.budget} -> {r.angle_deg:.3f} deg in {r.seconds:.2f} s "
                f"(reached={r.reached}; probes {[(b, round(a, 2)) for b, a in r.probes]})")
        sec, run = per_iteration(p, alg, extra, short_repeats)
        row.update(seconds_per_iteration=sec, jvps_per_iteration=run.value.jvps / (1 + extra))
        if not to_accuracy:
            row.update(peak_rss_mb=run.peak_rss / 2**20, rss_growth_mb=run.rss_growth / 2**20)
        log(f"[{name}] {alg}: {sec:.3f} s/iteration")
    ours_row = algs["ours"]
    for width, key in ((k, "floor_seconds"), (int(ours_row["jvps_per_iteration"]), "floor_seconds_at_block_width")):
        report[key] = min(measure(partial(floor_products, p, width)).value for _ in range(short_repeats))
    report["iteration_over_floor"] = ours_row["seconds_per_iteration"] / report["floor_seconds"]
    for alg in ("sequential", "chunked_jacfwd"):
        report[f"iteration_speedup_vs_{alg}"] = algs[alg]["seconds_per_iteration"] / ours_row["seconds_per_iteration"]
        if not to_accuracy:
            continue
        report[f"speedup_vs_{alg}"] = algs[alg]["seconds_to_target"] / ours_row["seconds_to_target"]
        # A reference that never reaches the target would take longer than its capped run: the
        # speedup is a lower bound. Also compare at the angle the reference does reach.
        report[f"speedup_vs_{alg}_is_lower_bound"] = not algs[alg]["reached"]
        if not algs[alg]["reached"]:
            r = time_to_accuracy(p, "ours", ref, algs[alg]["angle_deg"], repeats)
            report[f"speedup_vs_{alg}_at_its_angle"] = algs[alg]["seconds_to_target"] / r.seconds
    if to_accuracy:
        report["max_angle_deg"] = ours_row["angle_deg"]
    log(f"[{name}] floor {report['floor_seconds']:.3f} s; ours/floor {report['iteration_over_floor']:.2f}")
    return report


def summary(reports: list[dict]) -> dict:
    """The headline figures, the least favourable across the models that have them."""
    timed = [r for r in reports if "max_angle_deg" in r]
    out = {"iteration_over_floor": max(r["iteration_over_floor"] for r in reports)}
    if timed:
        out.update(
            speedup_vs_sequential=min(r["speedup_vs_sequential"] for r in timed),
            speedup_vs_chunked_jacfwd=min(r["speedup_vs_chunked_jacfwd"] for r in timed),
            max_angle_deg=max(r["max_angle_deg"] for r in timed),
        )
    return out


def markdown(reports: list[dict]) -> str:
    lines = []
    for r in reports:
        lines += [f"### {r['model']} (weights: {r['weights']}; d={r['h_dim']}, output {r['output_size']}, "
                  f"k={r['k']}; a dense J would take {r['dense_jacobian_mb']:.0f} MB)", ""]
        if "reference" in r:
            lines += [f"Reference: {r['reference']}; s_(k+1)/s_k = {r['gap_s_k1_over_s_k']:.3f}.", ""]
        lines += ["| algorithm | budget | angle (deg) | time to target (s) | s / iteration | JVPs | VJPs | "
                  "forwards | peak RSS (MB) | RSS growth (MB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for alg, a in r["algorithms"].items():
            reached = "" if a.get("reached", True) else " (not reached)"
            lines.append(
                f"| {alg} | {a.get('budget', '-')}{reached} | {a.get('angle_deg', float('nan')):.3f} | "
                f"{a.get('seconds_to_target', float('nan')):.2f} | {a['seconds_per_iteration']:.3f} | "
                f"{a.get('jvps', '-')} | {a.get('vjps', '-')} | {a.get('forwards', '-')} | "
                f"{a['peak_rss_mb']:.0f} | {a['rss_growth_mb']:.0f} |")
        width = int(r["algorithms"]["ours"]["jvps_per_iteration"])
        lines += ["", f"Floor (bare {r['k']} JVPs + {r['k']} VJPs): {r['floor_seconds']:.3f} s "
                  f"({width} + {width}: {r['floor_seconds_at_block_width']:.3f} s); ours per iteration / floor = "
                  f"{r['iteration_over_floor']:.2f}; per-iteration speedup vs sequential "
                  f"{r['iteration_speedup_vs_sequential']:.1f}x, vs chunked-jacfwd "
                  f"{r['iteration_speedup_vs_chunked_jacfwd']:.1f}x."]
        for alg in ("sequential", "chunked_jacfwd"):
            if f"speedup_vs_{alg}" not in r:
                continue
            line = f"Time to target: ours is {r[f'speedup_vs_{alg}']:.1f}x faster than {alg}"
            if r[f"speedup_vs_{alg}_is_lower_bound"]:
                line += (f" (a lower bound: {alg} never gets there; to the "
                         f"{r['algorithms'][alg]['angle_deg']:.1f} deg it does reach, ours is "
                         f"{r[f'speedup_vs_{alg}_at_its_angle']:.1f}x faster)")
            lines.append(line + ".")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only (< 1 minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--models", default=None,
                        help="comma-separated from tiny, bundled, celebahq256 (default: all; --quick: tiny)")
    parser.add_argument("--full", action="store_true",
                        help="time to accuracy on celebahq256 too (hours on a CPU; by default per-iteration only)")
    parser.add_argument("--k", type=int, default=None, help="rank (default: 4 on tiny, 8 elsewhere)")
    parser.add_argument("--target", type=float, default=1.0, help="largest principal angle to reach, degrees")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per figure, best kept (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global clock
    clock = time.process_time if args.threads == 1 else time.perf_counter
    names = (args.models or ("tiny" if args.quick else "tiny,bundled,celebahq256")).split(",")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    reports = []
    for name in names:
        # k=4 on tiny keeps --quick within a minute (the sequential reference costs k x its budget).
        k = args.k or (4 if name == "tiny" else 8)
        reports.append(benchmark_model(name, k, to_accuracy=args.full or name != "celebahq256", target=args.target,
                                       repeats=args.repeats, log=log))
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "clock": "process CPU time" if clock is time.process_time else "wall time",
               "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({**summary(reports), "target_deg": args.target, "machine": machine, "models": reports},
                         indent=2))
    else:
        print(markdown(reports))
        print(json.dumps({**summary(reports), "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
