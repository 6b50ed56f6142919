"""Every default of the method, once: one frozen dataclass per stage (mining, editing, the catalogue).

Each field's default is written here and nowhere else. The ``localedit`` options, the Prefect
flows' parameters, ``deployment.yaml`` (kept in step by ``tests/test_settings.py``) and the run
store's saved config are derived from these classes, so changing a default here changes it
everywhere. The evaluation's own settings (target change, image counts) are in
``localedit.evaluation.settings``, one layer up.

A class attribute is the field's default (``MiningSettings.t`` is 500): modules whose functions
take a single default argument read it there instead of building an instance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from localedit.core.jive import JIVE

if TYPE_CHECKING:
    from localedit.core.ddim import EditSchedule


def jive_params(**overrides) -> dict:
    """JIVE's settings as the estimator's own parameters (``JIVE.get_params``), defaults filled in:
    what a run stores and ``JIVE(**params)`` rebuilds. ``overrides`` are ``JIVE`` arguments."""
    return JIVE(**overrides).get_params()


# Precisions of the Jacobian products, by accelerate's names: fp32, or autocast to bf16 or fp16.
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class MiningSettings:
    """What a mining run computes per image (the run store saves these with the run; a run resumes only
    with equal ones).

    regions: comma-separated presets or a regions JSON file; t: the timestep where the Jacobians
    are taken (rounded to the DDIM grid); k: subspace size per region (and complement);
    num_steps: DDIM steps of inversion, sampling and every edit of the run's directions;
    seed: of images sampled from the model; complements: our extension (each region's complement
    is one more JIVE block, so individual directions stay local), False for the paper's JIVE;
    jive: the JIVE estimator's parameters (ranks None: chosen from the subspace angles); precision: of
    the Jacobian products (one of ``PRECISIONS``), reduced for a GPU worker's tensor cores at a measured
    cost of <= 0.9 degrees of subspace angle (bf16, bundled model).
    """

    regions: str = "eyes,mouth"
    t: int = 500
    k: int = 8
    num_steps: int = 50
    seed: int = 0
    complements: bool = True
    jive: dict = field(default_factory=jive_params)
    precision: str = "fp32"


# What `localedit run` (`make run`) mines on the bundled model, and what `localedit evaluate --compare`
# compares against: the joint rank is fixed at 1, because the bundled model's eyes and mouth subspaces
# lie 60-73 degrees apart, so the automatic rank finds no joint direction, yet the most shared one (in
# 15 of 24 images) is worth seeing next to the local ones.
BUNDLED_RUN = MiningSettings(jive=jive_params(joint_rank=1))


EDIT_SCHEDULES = ("from_t_edit", "all")


def check_schedule(kind: str) -> None:
    if kind not in EDIT_SCHEDULES:
        raise ValueError(f"unknown edit schedule {kind!r}; use {' or '.join(map(repr, EDIT_SCHEDULES))}")


@dataclass(frozen=True)
class EditSettings:
    """How a direction is applied: ``alpha * ||h|| * v`` is added to h on the reverse steps the schedule
    picks. A catalogue stores these, so every consumer (``localedit edit``, the catalogue's readings,
    the evaluation and its strips) applies a direction the same way.

    schedule: ``"all"`` edits every reverse step; ``"from_t_edit"`` only while t >= ``t_edit``
    (far less local on the bundled model: ``localedit.core.ddim.EditSchedule``); alphas: the
    strengths (relative to ||h||) a strip shows; alpha_range: the strengths strength matching may
    choose (a dead direction stays finite).
    """

    schedule: str = "all"
    t_edit: int = 500
    alphas: tuple[float, ...] = (-0.3, -0.15, 0.0, 0.15, 0.3)
    alpha_range: tuple[float, float] = (1e-3, 4.0)

    def __post_init__(self):
        check_schedule(self.schedule)  # an unknown schedule fails where it was given

    @property
    def edit_schedule(self) -> "EditSchedule":
        """The DDIM edit schedule these settings ask for."""
        from localedit.core.ddim import EditSchedule  # ddim reads its defaults from this module

        return EditSchedule(self.schedule, self.t_edit)

    def to_attrs(self) -> dict:
        """JSON-ready (tuples as lists), for the catalogue."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "EditSettings":
        return cls(**{f.name: tuple(attrs[f.name]) if isinstance(attrs[f.name], list) else attrs[f.name]
                      for f in fields(cls) if f.name in attrs})


@dataclass(frozen=True)
class CatalogueSettings:
    """Which per-image directions become catalogue rows: a consensus direction must lie within squared
    cosine ``threshold`` of the subspaces of at least ``min_support`` images."""

    threshold: float = 0.5
    min_support: int = 2

    def __post_init__(self):  # impossible settings fail where they are given, before any mining
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold is a squared cosine in (0, 1]; got {self.threshold}")
        if self.min_support < 1:
            raise ValueError(f"min_support must be at least 1; got {self.min_support}")
