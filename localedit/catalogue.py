"""A run's catalogue of editing directions: one row per shared direction, its vector in the run store.

``catalogue.parquet`` lies next to ``store.zarr`` in the run directory; row ``i`` points at
row ``vector`` of the store's ``directions`` array. Per region, the individual (local)
directions of all images are aggregated into consensus directions (see
``localedit.aggregate``); the joint (global) directions likewise, under the region name
``"eyes+mouth"`` (the regions joined by "+"), whose mask is their union. The parquet file is
written last and atomically, so it exists only for a complete catalogue.

    cat = localedit.catalogue.open("out/run")
    cat.frame.query("region == 'eyes' and kind == 'individual'")
    v = cat.vector("eyes/individual/0")
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from localedit.aggregate import consensus
from localedit.models import DiffusionModel
from localedit.regions import Region
from localedit.store import RunStore

CATALOGUE_NAME = "catalogue.parquet"
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SUPPORT = 2
ATTRS = ("model_source", "model_fingerprint", "t", "k", "num_steps", "regions", "images", "image_sources",
         "resolution", "h_shape", "seed", "jive")


def joint_region(regions) -> str:
    """Name under which a run's joint directions are listed: its regions joined by '+'."""
    return "+".join(regions)


def direction_id(region: str, kind: str, rank: int) -> str:
    return f"joint/{rank}" if kind == "joint" else f"{region}/{kind}/{rank}"


def build(run_dir: str | Path, threshold: float = DEFAULT_THRESHOLD,
          min_support: int = DEFAULT_MIN_SUPPORT) -> Path:
    """Aggregate a finished run's per-image JIVE results into its catalogue; returns the parquet path.

    ``min_support`` is capped at the number of images, so a run over one image still lists its
    directions.
    """
    store = RunStore(run_dir)
    config = store.config
    done, total = store.progress()["split"]
    if done < total:
        raise ValueError(f"run {store.run_dir} is incomplete ({done} of {total} images split); resume it first")
    splits = [store.split(i) for i in range(len(config.images))]
    min_support = min(min_support, len(splits))
    groups = [(region, "individual", [s.individual[a] for s in splits], [s.individual_singular_values[a] for s in splits])
              for a, region in enumerate(config.regions)]
    groups.append((joint_region(config.regions), "joint", [s.joint for s in splits],
                   [s.joint_singular_values for s in splits]))
    created_at = pd.Timestamp(datetime.now(timezone.utc))
    rows, vectors = [], []
    for region, kind, bases, singular_values in groups:
        found = consensus(bases, singular_values, config.k, threshold, min_support)
        for rank in range(found.directions.shape[1]):
            rows.append({
                "id": direction_id(region, kind, rank), "region": region, "kind": kind, "rank": rank,
                "singular_value": float(found.singular_values[rank]),
                "consistency": float(found.consistency[rank]), "support": int(found.support[rank]),
                "n_images": found.n_images, "vector": len(vectors), "t": config.t,
                "model_fingerprint": config.model_fingerprint, "run_id": store.run_id, "created_at": created_at,
            })
            vectors.append(found.directions[:, rank])
    frame = pd.DataFrame(rows, columns=["id", "region", "kind", "rank", "singular_value", "consistency", "support",
                                        "n_images", "vector", "t", "model_fingerprint", "run_id", "created_at"])
    path = store.run_dir / CATALOGUE_NAME
    path.unlink(missing_ok=True)  # from here until the rename below, the run has no catalogue
    matrix = torch.stack(vectors) if vectors else torch.zeros(0, config.h_dim)
    store.write_directions(matrix, {"threshold": threshold, "min_support": min_support})
    tmp = path.with_name(path.name + ".partial")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


class Catalogue:
    """The directions of one run: ``.frame`` (a DataFrame, one row per direction), ``.vector(id)``,
    ``.attrs`` (run settings), ``.regions`` (name -> Region at the model's resolution)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        path = self.run_dir / CATALOGUE_NAME
        if not path.exists():
            raise FileNotFoundError(f"no catalogue at {path}; mine one with `localedit mine --out {self.run_dir}`")
        self.frame = pd.read_parquet(path)
        store = RunStore(self.run_dir)
        vectors, build_attrs = store.directions()
        self._vectors = torch.from_numpy(vectors)
        run_attrs = dict(store.group.attrs)
        self.attrs = {**{key: run_attrs[key] for key in ATTRS}, "complements": bool(run_attrs.get("complements", False)),
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

    def vector(self, id: str) -> torch.Tensor:
        """The unit h-space vector (flat, float32) of direction ``id``."""
        match = self.frame.index[self.frame["id"] == id]
        if len(match) == 0:
            raise KeyError(f"no direction {id!r} in {self.run_dir}; ids: {', '.join(self.frame['id'])}")
        v = self._vectors[int(self.frame.at[match[0], "vector"])]
        return v / v.norm()

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
