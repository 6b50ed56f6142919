"""Strength matching: the edit strength (alpha) at which a direction changes images by a target amount.

A weak edit always looks local, so directions are compared at equal change, never at equal alpha.
Pure search over a scalar measurement: the caller says what one edit at alpha costs and returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from localedit.core.editing import ALPHA_RANGE

T = TypeVar("T")  # what one measurement returns besides its change (e.g. the edited images)


@dataclass
class Match(Generic[T]):
    """The alpha found for a target change, and what the measurement at that alpha returned.

    ``change`` is the measured change at ``alpha``; ``matched`` whether it is within tolerance of
    the target; ``evaluations`` how many measurements the search made. ``result`` is the second
    value ``measure(alpha)`` returned (``Match[torch.Tensor]`` from ``scoring.match_direction``:
    the edits (n, 2, C, H, W) in [0, 1] at +alpha and -alpha), kept so the caller need not edit
    again; None for a match passed on without it.
    """

    alpha: float
    change: float
    matched: bool
    evaluations: int
    result: T | None = None


def match_strength(measure: Callable[[float], tuple[float, T]], target: float, alpha0: float = 0.1,
                   rtol: float = 0.1, max_evals: int = 6, bounds: tuple[float, float] = ALPHA_RANGE) -> Match[T]:
    """Alpha whose change ``measure(alpha)[0]`` is within ``rtol`` of ``target``: safeguarded bisection on log alpha.

    Before a bracket exists the change is taken as proportional to alpha (edits are nearly
    linear at small alpha); inside one, log change is interpolated linearly in log alpha and
    the guess is kept within the middle half of the bracket, so the bracket loses at least a
    quarter of its width per step whatever the curve. The closest measurement is returned;
    ``matched`` says whether it is within tolerance (a direction may saturate below the target).
    """
    if target <= 0:
        raise ValueError(f"target change must be positive, got {target}")
    lo_b, hi_b = math.log(bounds[0]), math.log(bounds[1])
    log_target = math.log(target)
    lo = hi = None  # (log alpha, log change) just below / above the target
    best: Match[T] | None = None
    a = min(max(math.log(alpha0), lo_b), hi_b)
    for n in range(1, max_evals + 1):
        change, result = measure(math.exp(a))
        c = math.log(max(change, 1e-12))
        if best is None or abs(c - log_target) < abs(math.log(max(best.change, 1e-12)) - log_target):
            best = Match(math.exp(a), change, False, n, result)
        best.evaluations = n
        if abs(change / target - 1) <= rtol:
            best.matched = True
            return best
        if change < target:
            lo = (a, c)
        else:
            hi = (a, c)
        if lo is not None and hi is not None:
            frac = (log_target - lo[1]) / (hi[1] - lo[1]) if hi[1] > lo[1] else 0.5
            new = lo[0] + min(max(frac, 0.25), 0.75) * (hi[0] - lo[0])
        else:
            step = log_target - c  # change proportional to alpha; at most x8 per step, at least x1.25
            new = a + math.copysign(min(max(abs(step), math.log(1.25)), math.log(8)), step)
        new = min(max(new, lo_b), hi_b)
        if new == a:
            break  # pinned at a bound: the target is out of reach
        a = new
    return best
