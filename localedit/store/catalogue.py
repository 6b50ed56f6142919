"""A run's catalogue of editing directions: one row per shared direction, its vector in the run store.

``catalogue.parquet`` lies next to ``store.zarr`` in the run directory; row ``i`` points at
row ``vector`` of the store's ``directions`` array. Per region, the individual (local)
directions of all images are aggregated into consensus directions (see
``localedit.core.aggregate``); the joint (global) directions likewise, under the region name
``"eyes+mouth"`` (the regions joined by "+"), whose mask is their union. The parquet file is
written last and atomically, so it exists only for a complete catalogue.

Given the run's model, each region gets three families of local directions: region variation
(``localedit.core.variation``, ours), region contrast (``localedit.core.contrast``, ours) and the JIVE
individual consensus (the paper's, with complements by default). All are edited at +-alpha on a
few of the run's images; the family whose top direction edited its region best there (locality
times, with the factor probe, the share of change on the region's own factors) takes the ids
``eyes/individual/r`` (the default a user reaches first), the others keep ``eyes/variation/r``,
``eyes/contrast/r``, ``eyes/jive/r``. The readings are columns: ``edit_locality``, and with the
factor probe ``label`` (the factor moved most), ``label_share`` and ``edit_purity`` (the share on
the region's factors; a joint row's: on the global factors); with reference directions,
``reference`` (the closest supervised reference of the region) and ``reference_cos``. A labelled
direction points the way its label grows: +alpha raises it. Joint
(global) rows come in two families too, the paper's JIVE joint consensus (``joint/jive/r``) and
the joint variation (``localedit.core.variation``, ours: ``joint/variation/r``); the one whose top
direction moved the generator's global factors most (with the factor probe; else JIVE's) is
listed as ``joint/r``. With the probe, a joint family's directions are ranked by that share (read
on the run's images), not by variance: the most global edit is ``joint/0``. Without a model only the JIVE rows exist, as ``individual`` and ``joint``.

    cat = localedit.store.catalogue.open("out/run")
    cat.frame.query("region == 'eyes' and kind == 'individual'")
    v = cat.vector("eyes/individual/0")
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from localedit.bundled.probe import FactorProbe
from localedit.bundled.references import regions_of
from localedit.core.aggregate import consensus
from localedit.core.contrast import contrast_directions
from localedit.core.hspace import encode
from localedit.core.models import DiffusionModel
from localedit.core.regions import Region
from localedit.core.settings import CatalogueSettings, EditSettings
from localedit.core.variation import RegionVariation
from localedit.evaluation import schema as col  # the label columns the evaluation's rows carry on
from localedit.evaluation.baselines import CATALOGUE_FAMILIES
from localedit.evaluation.labels import Reading, closest_reference, read_edits
from localedit.store.runs import STORE_NAME, RunStore
from localedit.utils.atomic import write_atomic

CATALOGUE_NAME = "catalogue.parquet"
EDIT_ATTR = "edit"  # the directions array's attribute holding the catalogue's EditSettings
# Bumped whenever ``build`` changes what a catalogue holds: a finished run resumed by a newer localedit then
# rebuilds its catalogue instead of reusing one in the older format (``is_current``).
CATALOGUE_FORMAT = 1
FORMAT_ATTR = "format"
ATTRS = ("model_source", "model_fingerprint", "t", "k", "num_steps", "regions", "images", "image_sources",
         "resolution", "h_shape", "seed", "jive")


def joint_region(regions) -> str:
    """Name under which a run's joint directions are listed: its regions joined by '+'."""
    return "+".join(regions)


COLUMNS = ["id", "region", "kind", "method", "rank", "singular_value", "consistency", "support", "n_images",
           "vector", "t", col.LABEL, col.LABEL_SHARE, "edit_locality", "edit_purity", "edit_alpha", "reference",
           "reference_cos", "model_fingerprint", "run_id", "created_at"]
LABEL_IMAGES = 4  # run images edited to read each direction (two were too few: the reading then disagreed with held-out faces)
LABEL_RANKS = 2  # directions of each local family read (label, locality, purity); lower ranks are left unread
# Joint directions read, each family's strongest first: with the probe they are then ordered by their share on the
# global factors (``_rank_joint_by_reading``). Variance order put hair colour and skin tone first on the bundled
# model (global share 0.24-0.28 on held-out faces for joint-variation axes 0, 2, 3), a face-width axis fifth (0.79).
JOINT_READ_RANKS = 8
CONTRAST_IMAGES = 4  # run images whose Jacobians region contrast sums over


JOINT_METHODS = ("jive_joint", "joint_variation")  # families of joint (global) rows; the others are local


Row = tuple[str, str, dict, torch.Tensor]  # (region, method, statistics, unit vector (d,))


def _variation_rows(store: RunStore, model: DiffusionModel | None) -> tuple[list[Row], list[Row]]:
    """Region-variation rows of every region, and joint-variation rows, over all the run's images (their h at the
    run's t); none without a model or with too few images."""
    config = store.config
    estimator = RegionVariation(n_directions=config.k)
    if model is None or len(config.images) < estimator.min_images:  # the latter said by ``size_notes``
        return [], []
    x_t = torch.stack([store.x_t(i) for i in range(len(config.images))]).to(model.device)
    fit = estimator.fit(encode(model.unet, x_t, config.t).h.cpu(), store.regions)
    families = [(region, "region_variation", basis, variances)
                for region, basis, variances in zip(config.regions, fit.directions_, fit.variances_)]
    families.append((joint_region(config.regions), "joint_variation", fit.joint_directions_, fit.joint_variances_))
    local, joint = [], []
    for region, method, basis, variances in families:
        total = float(variances.sum())
        for rank in range(basis.shape[1]):
            stats = {"singular_value": float(variances[rank].sqrt()), "consistency": float(variances[rank]) / total,
                     "support": fit.n_images_, "n_images": fit.n_images_}
            (joint if method in JOINT_METHODS else local).append((region, method, stats, basis[:, rank]))
    return local, joint


def _contrast_rows(store: RunStore, model: DiffusionModel | None) -> list[Row]:
    """Region-contrast directions of every region over the run's first images; none without a model."""
    if model is None:
        return []
    config = store.config
    n = min(CONTRAST_IMAGES, len(config.images))
    x_t = torch.stack([store.x_t(i) for i in range(n)])
    out = []
    for region, (vectors, values) in zip(config.regions, contrast_directions(model, x_t, config.t, store.regions)):
        for rank in range(vectors.shape[1]):
            stats = {"singular_value": float(values[rank]), "consistency": float("nan"), "support": n, "n_images": n}
            out.append((region, "region_contrast", stats, vectors[:, rank]))
    return out


def _selection_score(reading: Reading | None, joint: bool) -> float:
    """How much a family's top direction looks like what its ids promise. Local: its edit locality, times its
    factor purity where the probe read one (a local edit that moves the wrong factor, e.g. skin inside the eyes
    box, loses). Joint: its share of change on the generator's global factors (0 without a probe, so the first
    family found, the paper's JIVE joint, keeps the ids)."""
    if reading is None:
        return 0.0
    purity = reading.purity
    if joint:
        return 0.0 if math.isnan(purity) else purity
    return reading.locality * (1.0 if math.isnan(purity) else purity)


def _signed_by_label(vectors: torch.Tensor, readings: list[Reading | None]) -> torch.Tensor:
    """``vectors`` (m, d) with each labelled row turned to point the way its label grows, so +alpha raises
    the label (``eyes/individual/0``, labelled eye_openness, opens the eyes at +alpha). A direction's sign is
    otherwise arbitrary (an SVD's); unlabelled rows keep theirs."""
    flip = torch.tensor([-1.0 if reading is not None and reading.sign < 0 else 1.0 for reading in readings])
    return vectors * flip[:, None].to(vectors.dtype)


def _family_ranks(found: list[Row]) -> list[int]:
    """Each row's rank within its (region, method) family, in the order found."""
    counts: dict[tuple[str, str], int] = {}
    ranks = []
    for region, method, _, _ in found:
        ranks.append(counts.get((region, method), 0))
        counts[region, method] = ranks[-1] + 1
    return ranks


def _rank_joint_by_reading(found: list[Row], ranks: list[int], readings: list[Reading | None]) -> list[int]:
    """Ranks with each joint family's read directions reordered by their share of change on the generator's global
    factors (the probe's reading on the run's images), highest first: rank 0 is then the family's most global edit,
    not its largest variance (ours; a supervised reading, as the family choice is). Unread directions, local
    families and families without a probe reading keep their order."""
    new = list(ranks)
    for method in JOINT_METHODS:
        rows = [i for i, (_, m, _, _) in enumerate(found) if m == method and readings[i] is not None]
        if rows and not any(math.isnan(readings[i].purity) for i in rows):
            by_purity = sorted(rows, key=lambda i: (-readings[i].purity, ranks[i]))
            for i, rank in zip(by_purity, sorted(ranks[i] for i in rows)):
                new[i] = rank
    return new


def _ids(found: list[Row], ranks: list[int], readings: list[Reading | None]) -> list[str]:
    """Row ids ``<region>/<family>/<rank>`` and ``joint/<family>/<rank>`` (``ranks``: ``_family_ranks``). Per
    region, the local family whose top direction scored best on the run's images (``_selection_score``; ties and
    unread: the first found) is listed as ``<region>/individual/<rank>`` instead, and the best joint family as
    ``joint/<rank>``."""
    groups = ["joint" if method in JOINT_METHODS else region for region, method, _, _ in found]
    best: dict[str, tuple[str, float]] = {}
    for group, (_, method, _, _), rank, reading in zip(groups, found, ranks, readings):
        score = _selection_score(reading, group == "joint")
        if rank == 0 and (group not in best or score > best[group][1]):
            best[group] = (method, score)

    def name(group: str, method: str, rank: int) -> str:
        if best[group][0] != method:
            return f"{group}/{CATALOGUE_FAMILIES[method]}/{rank}"
        return f"joint/{rank}" if group == "joint" else f"{group}/individual/{rank}"

    return [name(group, method, rank) for group, (_, method, _, _), rank in zip(groups, found, ranks)]


def build(run_dir: str | Path, threshold: float = CatalogueSettings.threshold,
          min_support: int = CatalogueSettings.min_support, model: DiffusionModel | None = None,
          probe: FactorProbe | None = None, references: dict[str, torch.Tensor] | None = None,
          edit: EditSettings = EditSettings(), progress: bool = False) -> Path:
    """Aggregate a finished run's per-image results into its catalogue; returns the parquet path.

    ``min_support`` is capped at the number of images (with a warning), so a run over one image
    still lists its directions. ``edit`` (how the run's directions are applied) is stored with the catalogue:
    its readings, ``localedit edit`` and the evaluation all apply a direction that way. ``model`` (the run's) adds the region-variation and region-contrast rows and the
    edit readings (label with ``probe``, locality) that choose each region's ``individual`` rows;
    ``references`` (factor -> unit h vector) adds each row's closest reference. ``progress`` shows a bar over
    its stages (region and joint variation with JIVE's consensus, region contrast, edit readings): with a model,
    the build can take longer than a small run's mining.
    """
    store = RunStore(run_dir)
    config = store.config
    done, total = store.progress()["split"]
    if done < total:
        raise ValueError(f"run {store.run_dir} is incomplete ({done} of {total} images split); resume it first")
    splits = [store.split(i) for i in range(len(config.images))]
    _warn(size_notes(len(splits), min_support, model is not None))
    attrs = _build_attrs(store, threshold, min_support, edit, model is not None)
    min_support = attrs["min_support"]
    with tqdm(total=3, desc="catalogue", disable=not progress) as bar:  # closed even if a stage raises
        bar.set_postfix_str("variation, consensus")
        found, joint_variation = _variation_rows(store, model)
        jive_method = "jive_complement" if config.complements else "jive_individual"
        groups = [(region, jive_method, [s.individual[a] for s in splits], [s.individual_singular_values[a] for s in splits])
                  for a, region in enumerate(config.regions)]
        groups.append((joint_region(config.regions), "jive_joint", [s.joint for s in splits],
                       [s.joint_singular_values for s in splits]))
        for region, method, bases, singular_values in groups:
            shared = consensus(bases, singular_values, config.k, threshold, min_support)
            for rank in range(shared.directions.shape[1]):
                stats = {"singular_value": float(shared.singular_values[rank]), "consistency": float(shared.consistency[rank]),
                         "support": int(shared.support[rank]), "n_images": shared.n_images}
                found.append((region, method, stats, shared.directions[:, rank]))
        bar.update()
        bar.set_postfix_str("region contrast")
        found += joint_variation + _contrast_rows(store, model)
        bar.update()
        bar.set_postfix_str("edit readings")
        vectors = torch.stack([v for *_, v in found]) if found else torch.zeros(0, config.h_dim)
        masks = {r.name: r.mask for r in store.regions}
        masks[joint_region(config.regions)] = torch.stack(list(masks.values())).amax(0)
        ranks = _family_ranks(found)
        readings: list[Reading | None] = [None] * len(found)
        read = [i for i, ((_, method, _, _), rank) in enumerate(zip(found, ranks))
                if rank < (JOINT_READ_RANKS if method in JOINT_METHODS else LABEL_RANKS)] if model is not None else []
        if read:
            x_T = torch.stack([store.x_T(i) for i in range(min(LABEL_IMAGES, len(config.images)))])
            for i, reading in zip(read, read_edits(model, x_T, vectors[read], [found[i][0] for i in read],
                                                   torch.stack([masks[found[i][0]] for i in read]), probe,
                                                   edit=edit, num_steps=config.num_steps)):
                readings[i] = reading
        vectors = _signed_by_label(vectors, readings)
        bar.update()
    ranks = _rank_joint_by_reading(found, ranks, readings)
    in_region = regions_of()
    every = [f for factors in in_region.values() for f in factors]
    closest = [closest_reference(v[None], references or {}, in_region.get(region, every))[0]
               for (region, *_), v in zip(found, vectors)]
    created_at = pd.Timestamp(datetime.now(timezone.utc))
    nothing = Reading("", float("nan"), float("nan"), float("nan"), float("nan"))
    rows = [{"id": id_, "region": region, "kind": "joint" if method in JOINT_METHODS else "individual", "method": method,
             "rank": rank, **stats, "vector": i, "t": config.t, col.LABEL: reading.label,
             col.LABEL_SHARE: reading.label_share, "edit_locality": reading.locality, "edit_purity": reading.purity,
             "edit_alpha": reading.alpha, "reference": ref,
             "reference_cos": cos, "model_fingerprint": config.model_fingerprint, "run_id": store.run_id,
             "created_at": created_at}
            for i, (id_, rank, (region, method, stats, _), reading, (ref, cos))
            in enumerate(zip(_ids(found, ranks, readings), ranks, found, [r or nothing for r in readings], closest))]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    path = store.run_dir / CATALOGUE_NAME
    path.unlink(missing_ok=True)  # from here until the rename below, the run has no catalogue
    store.write_directions(vectors, frame["id"].tolist(), attrs)
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def size_notes(n_images: int, min_support: int, with_model: bool) -> list[str]:
    """What a catalogue of a run over ``n_images`` images is short of for their number, one line each: said when it
    is built, and again when a rerun keeps it (``is_current``), since the user may have changed neither."""
    notes = []
    if min_support > n_images:
        notes.append(f"min_support {min_support} exceeds the run's {n_images} image(s): a catalogue direction needs "
                     f"the support of all {n_images}")
    needed = RegionVariation().min_images
    if with_model and n_images < needed:
        notes.append(f"region and joint variation need at least {needed} images; this run has {n_images}, so the "
                     "catalogue has none of their directions (mine more images)")
    return notes


def _warn(notes: list[str]) -> None:
    for note in notes:  # attributed to the caller of ``build`` or ``is_current``
        warnings.warn(note, stacklevel=3)


def _build_attrs(store: RunStore, threshold: float, min_support: int, edit: EditSettings, with_model: bool) -> dict:
    """What decides a catalogue's content besides the run itself, as stored with its directions
    (``min_support`` capped at the run's images, as ``build`` applies it)."""
    return {"threshold": threshold, "min_support": min(min_support, len(store.config.images)),
            EDIT_ATTR: edit.to_attrs(), "with_model": with_model, FORMAT_ATTR: CATALOGUE_FORMAT}


def is_current(run_dir: str | Path, threshold: float = CatalogueSettings.threshold,
               min_support: int = CatalogueSettings.min_support, edit: EditSettings = EditSettings(),
               with_model: bool = True) -> bool:
    """Whether the run's catalogue exists and ``build`` with these arguments (``with_model``: given a model) would
    write it again unchanged, so a resumed run that mined nothing new may keep it: rebuilding took 27 s of a 39 s
    command that resumed a finished 6-image run. False for a catalogue of another format (``CATALOGUE_FORMAT``).
    When True, it warns what ``build`` warned of the run's size (``size_notes``)."""
    store = RunStore(run_dir)
    if not (store.run_dir / CATALOGUE_NAME).exists():
        return False
    stored = store.directions_attrs()
    wanted = _build_attrs(store, threshold, min_support, edit, with_model)
    current = all(stored.get(key) == value for key, value in wanted.items())
    if current:
        _warn(size_notes(len(store.config.images), min_support, with_model))
    return current


class LegacyCatalogueWarning(UserWarning):
    """A catalogue built before edit settings were stored with it: its directions are applied with the defaults."""


def stored_edit(attrs: dict, where: Path) -> EditSettings:
    """A catalogue's edit settings. A catalogue built before they were stored was read, evaluated and
    edited on every reverse step (``EditSettings()``'s schedule), so it falls back to the defaults, with a
    ``LegacyCatalogueWarning``."""
    if EDIT_ATTR in attrs:
        return EditSettings.from_attrs(attrs[EDIT_ATTR])
    warnings.warn(f"catalogue {where} stores no edit settings (built by an older localedit); its directions are "
                  f"applied with the defaults {EditSettings()} (rebuild it by rerunning `localedit mine`)",
                  LegacyCatalogueWarning, stacklevel=3)
    return EditSettings()


def _no_catalogue(run_dir: Path) -> str:
    """Why a folder has no catalogue, and the command that gives it one."""
    if (run_dir / STORE_NAME).exists():
        done, total = RunStore(run_dir).progress()["split"]
        return (f"no catalogue at {run_dir / CATALOGUE_NAME}: the run there is unfinished ({done} of {total} images "
                "mined, no catalogue built); rerun the `localedit mine` command that started it to finish it")
    return (f"no catalogue at {run_dir / CATALOGUE_NAME}; mine one with `localedit mine --samples N --out {run_dir}` "
            "(or --images FOLDER)")


class Catalogue:
    """The directions of one run: ``.frame`` (a DataFrame, one row per direction), ``.vector(id)``,
    ``.attrs`` (run settings), ``.edit`` (how its directions are applied: ``localedit edit``, the
    evaluation and its strips all use it), ``.regions`` (name -> Region at the model's resolution)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        path = self.run_dir / CATALOGUE_NAME
        if not path.exists():
            raise FileNotFoundError(_no_catalogue(self.run_dir))
        self.frame = pd.read_parquet(path)
        store = RunStore(self.run_dir)
        vectors, build_attrs = store.directions()
        self._vectors = torch.from_numpy(vectors)
        run_attrs = dict(store.group.attrs)
        self.edit = stored_edit(build_attrs, self.run_dir)
        build_attrs.pop(EDIT_ATTR, None)
        self.attrs = {**{key: run_attrs[key] for key in ATTRS}, "complements": bool(run_attrs.get("complements", False)),
                      "precision": store.config.precision,
                      **build_attrs, "run_id": store.run_id}
        regions = store.regions
        union = torch.stack([r.mask for r in regions]).amax(0)
        self.regions = {r.name: r for r in regions} | {joint_region(store.config.regions): Region(
            joint_region(store.config.regions), union)}

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"Catalogue({str(self.run_dir)!r}: {len(self)} directions, regions {list(self.attrs['regions'])}, "
                f"t={self.attrs['t']}, model {self.attrs['model_fingerprint']})")

    def row(self, id: str) -> pd.Series:
        """Direction ``id``'s catalogue row; KeyError naming the catalogue's ids if there is none."""
        match = self.frame.index[self.frame["id"] == id]
        if len(match) == 0:
            raise KeyError(f"no direction {id!r} in {self.run_dir}; ids: {', '.join(self.frame['id'])}")
        return self.frame.loc[match[0]]

    def vector(self, id: str) -> torch.Tensor:
        """The unit h-space vector (flat, float32) of direction ``id``."""
        v = self._vectors[int(self.row(id)["vector"])]
        return v / v.norm()

    def apply(self, model: DiffusionModel, id: str, alphas, images: torch.Tensor | None = None,
              x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Edit images (n, C, H, W in [0, 1]), or their inverted latents ``x_T``, along direction ``id`` at each
        alpha, as the catalogue's edit settings say and with the run's DDIM steps, as the evaluation applies
        it: (n, len(alphas), C, H, W) in [0, 1]."""
        from localedit.core.editing import edit

        return edit(model, images, self.vector(id), alphas, self.edit.edit_schedule, self.attrs["num_steps"], x_T=x_T)

    def check_model(self, model: DiffusionModel) -> None:
        """Refuse a model other than the one the directions were mined on: h-spaces do not transfer."""
        mined = self.attrs["model_fingerprint"]
        if model.fingerprint != mined:
            raise ValueError(
                f"catalogue {self.run_dir} was mined on model {mined} ({self.attrs['model_source']}), "
                f"but this model is {model.fingerprint} ({model.source}); its directions do not apply to it")


def open(path: str | Path) -> Catalogue:  # noqa: A001 - mirrors zarr.open / xarray.open_dataset
    """The catalogue of a run directory (or of its ``catalogue.parquet``)."""
    path = Path(path)
    return Catalogue(path.parent if path.name == CATALOGUE_NAME else path)
