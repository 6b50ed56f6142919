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

    def __post_init__(self):  # impossible settings fail where they are given, before any model is loaded
        if not 0 < self.target < 1:
            raise ValueError(f"target is an RMS change of images in [0, 1], so it must lie in (0, 1); got {self.target}")
        for name, value, least in (("sources", self.n_source, 1), ("heldout", self.n_heldout, 1),
                                   ("strip_images", self.strip_images, 0), ("max_rank", self.max_rank, 1)):
            if value < least:
                raise ValueError(f"{name} must be at least {least}; got {value}")
