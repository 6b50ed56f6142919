"""The evaluation's defaults, once (the method's own are in ``localedit.core.settings``).

``localedit evaluate``, ``localedit run``, the evaluation flow and the in-process comparison
derive their defaults from ``EvaluationSettings``; ``localedit.evaluation.plan`` turns one into
the plan that both paths execute.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSettings:
    """How directions are compared.

    target: the RMS pixel change (images in [0, 1]) every direction is matched to before it is
    scored, so no method looks local by editing less; n_source: images directions are matched on
    (a run's first ones; for the comparison, mining images alternating closed and open eyes), and
    on which the baselines are mined; n_heldout: held-out images every direction is transferred
    to; strip_images: held-out images in each direction's strip and alpha sweep; max_rank:
    catalogue directions of rank below this are scored.
    """

    target: float = 0.03
    n_source: int = 4
    n_heldout: int = 16
    strip_images: int = 3
    max_rank: int = 1
