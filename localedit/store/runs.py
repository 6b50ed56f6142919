"""The run store: one Zarr v3 group per mining run, written chunk by chunk by independent tasks.

Every array is preallocated when the run is created and chunked per image or per
(image, region), so each pipeline task is the only writer of its chunks and nothing is ever
appended. A task's completion mark (its wall time in seconds; NaN until done) is written after
its chunks, so a run killed at any point leaves at worst an unmarked chunk, which the next run
recomputes; Zarr's local store writes each chunk to a temporary name and renames it, so no
chunk is half-written either. The store itself is built under a temporary name and renamed
into place, so a failed start leaves nothing behind. Nothing non-finite is ever written: a NaN
latent or basis fails its task instead of being marked done and read by every later task.

One run at a time writes a run directory: ``run_lock`` holds an exclusive lock on
``.localedit-run.lock`` (with the owner's pid) for the run's lifetime; a second run on the
same folder is refused, and only the holder removes temporary chunk files a killed writer left.

The layout follows xarray's Zarr conventions: every array carries ``dimension_names``, the
labels of the ``image``, ``region`` and ``block`` dimensions are coordinate arrays of those names
(written once, when the store is created; the catalogue's ``direction`` ids with its vectors),
and each quantity is a variable of its own, so

    ds = xarray.open_zarr(run_dir / "store.zarr", consolidated=False)
    ds.sel(region="eyes").individual_basis      # (image, h, component)
    ds.subspace_residual.sel(block="not_mouth")  # (image,)

A block is what gets a subspace of its own: a region, or (with complements) a region's
complement. Stores of layout 1 (``localedit-run/1``: labels only as attributes, the subspace
statistics in one (image, block, stat) array) still open, read and resume; xarray reads them
without coordinates.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import zarr

from localedit.core.jacobian import Subspace
from localedit.core.mining import Split, complement_name, complements_of
from localedit.core.regions import Region
from localedit.core.settings import MiningSettings, jive_params

STORE_NAME = "store.zarr"
LOCK_NAME = ".localedit-run.lock"
FORMAT = "localedit-run/2"  # the layout this code creates
FORMAT_1 = "localedit-run/1"  # still opened, read and resumed
# The statistics of a subspace computation (``Subspace``), one (image, block) variable each: name -> (dtype, fill).
SUBSPACE_STATS = {"subspace_iterations": ("int32", 0), "subspace_residual": ("float32", 0.0),
                  "subspace_converged": ("bool", False)}


@dataclass(frozen=True)
class RunConfig:
    """What a run computes. Stored as the group's attributes; a store resumes only with an equal config.

    ``image_sources`` holds a file path per image, or None for an image sampled from the model
    (its x_T is drawn from ``seed`` when the store is created). With ``complements``, each
    region's complement gets a subspace too (``blocks``), used by JIVE to keep individual
    directions local (see ``localedit.core.mining``).
    """

    model_source: str
    model_fingerprint: str
    resolution: int
    channels: int
    h_shape: tuple[int, ...]
    regions: tuple[str, ...]
    images: tuple[str, ...]
    image_sources: tuple[str | None, ...]
    t: int
    k: int
    num_steps: int
    seed: int = MiningSettings.seed
    jive: dict = field(default_factory=jive_params)
    complements: bool = False  # older runs, which lack the field, were the paper's form
    precision: str = MiningSettings.precision  # older runs, which lack the field, were fp32

    def __post_init__(self):
        # JIVE's full parameters (``JIVE.get_params``): a run stored with only some of them equals one with all.
        object.__setattr__(self, "jive", jive_params(**self.jive))

    @property
    def h_dim(self) -> int:
        return math.prod(self.h_shape)

    @property
    def blocks(self) -> tuple[str, ...]:
        """What gets a subspace: the regions, then (with ``complements``) their complements."""
        return self.regions + tuple(complement_name(r) for r in self.regions if self.complements)

    def to_attrs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "RunConfig":
        values = {f.name: attrs[f.name] for f in fields(cls) if f.name in attrs}  # older runs lack newer fields
        for name in ("h_shape", "regions", "images", "image_sources"):
            values[name] = tuple(values[name])
        return cls(**values)

    def differences(self, other: "RunConfig") -> list[str]:
        """The settings that differ, this run's value first, each named as ``localedit mine`` and
        ``mine_directions`` name it (``k: 3 != 4``, ``samples: 3 != 4``, ``joint_rank: None != 1``); where the
        model was loaded from is ignored (its fingerprint decides), and what follows from the model
        (resolution, channels, h shape) is said once, as the model."""
        mine, theirs = asdict(self), asdict(other)
        found = []
        said = {"model_source", "model_fingerprint", "images", "image_sources", "complements", "jive"}
        if self.model_fingerprint != other.model_fingerprint:
            found.append(f"model: fingerprint {self.model_fingerprint} != {other.model_fingerprint}")
            said |= {"resolution", "channels", "h_shape"}
        if (self.images, self.image_sources) != (other.images, other.image_sources):
            words = [_image_words(self), _image_words(other)]
            if words[0].startswith("samples") and words[1].startswith("samples"):
                words[1] = words[1].removeprefix("samples: ")
            found.append(" != ".join(words))
        if self.complements != other.complements:
            found.append(f"paper_jive: {not self.complements} != {not other.complements}")
        for key in mine["jive"]:
            if mine["jive"][key] != theirs["jive"][key]:
                found.append(f"{JIVE_FLAGS.get(key, 'JIVE ' + key)}: {mine['jive'][key]!r} != {theirs['jive'][key]!r}")
        return found + [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine
                        if name not in said and mine[name] != theirs[name]]


# How the run settings of JIVE are named where a user gives them (``localedit mine``, ``mine_directions``).
JIVE_FLAGS = {"joint_rank": "joint_rank", "individual_ranks": "individual_rank", "max_angle_deg": "max_angle_deg"}


def _image_words(config: RunConfig) -> str:
    """A run's images as its user gave them: ``samples: 3``, or ``images: 4 files (a.png, ...)``."""
    if all(source is None for source in config.image_sources):
        return f"samples: {len(config.images)}"
    shown = ", ".join(config.images[:3]) + (", ..." if len(config.images) > 3 else "")
    return f"images: {len(config.images)} files ({shown})"


def _coordinates(config: RunConfig) -> dict[str, tuple[str, ...]]:
    """The labels of the run's labelled dimensions: image names, region names, block names."""
    return {"image": config.images, "region": config.regions, "block": config.blocks}


def _layout(config: RunConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...], str, float]]:
    """name -> (shape, chunks, dimension names, dtype, fill value) of every data array of a run."""
    n, r, b, k, d = len(config.images), len(config.regions), len(config.blocks), config.k, config.h_dim
    c, s = config.channels, config.resolution
    image = ((n, c, s, s), (1, c, s, s), ("image", "channel", "y", "x"), "float32", 0.0)
    return {
        "masks": ((r, s, s), (r, s, s), ("region", "y", "x"), "float32", 0.0),
        "images": image,
        "x_T": image,
        "x_t": image,
        "subspace_basis": ((n, b, d, k), (1, 1, d, k), ("image", "block", "h", "component"), "float32", 0.0),
        "subspace_singular_values": ((n, b, k), (1, 1, k), ("image", "block", "component"), "float32", 0.0),
        **{name: ((n, b), (1, 1), ("image", "block"), dtype, fill) for name, (dtype, fill) in SUBSPACE_STATS.items()},
        "joint_basis": ((n, d, k), (1, d, k), ("image", "h", "component"), "float32", 0.0),
        "joint_singular_values": ((n, k), (1, k), ("image", "component"), "float32", 0.0),
        "joint_rank": ((n,), (1,), ("image",), "int32", -1),
        "individual_basis": ((n, r, d, k), (1, 1, d, k), ("image", "region", "h", "component"), "float32", 0.0),
        "individual_singular_values": ((n, r, k), (1, 1, k), ("image", "region", "component"), "float32", 0.0),
        "individual_rank": ((n, r), (1, 1), ("image", "region"), "int32", -1),
        # Completion marks: the task's wall time in seconds, NaN until its chunks are written. An
        # image's subspace marks share one chunk: the task that computes its blocks together marks
        # them in one write, so a killed run never leaves an image with some of them marked.
        "done_latent": ((n,), (1,), ("image",), "float64", math.nan),
        "done_subspace": ((n, b), (1, b), ("image", "block"), "float64", math.nan),
        "done_split": ((n,), (1,), ("image",), "float64", math.nan),
    }


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s run lock, or raise ValueError naming the run that holds it.

    An ``flock``: the kernel releases it when its holder dies, even by ``kill -9``, so a lock
    is never stale. The file keeps the holder's pid and host for the message.
    """
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{run_dir} is being written by another run (process {owner}); wait for it to "
                             f"finish or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _finite(name: str, value: torch.Tensor) -> np.ndarray:
    """float32 numpy copy of ``value``; ValueError if any entry is NaN or infinite (never stored, never marked)."""
    a = value.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite values; nothing was stored "
                         f"(the model or its schedule produced NaN or infinity)")
    return a


def _padded(columns: torch.Tensor, k: int, name: str) -> np.ndarray:
    """(d, r) or (r,) with r <= k -> zero-padded to k along the last axis; ValueError if not finite."""
    a = _finite(name, columns)
    pad = [(0, 0)] * (a.ndim - 1) + [(0, k - a.shape[-1])]
    return np.pad(a, pad)


class RunStore:
    """Read and write one run's Zarr group (``run_dir/store.zarr``)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"no run store at {self.path}")
        self.group = zarr.open_group(self.path, mode="r+", use_consolidated=False)
        self.format = self.group.attrs.get("format")
        if self.format not in (FORMAT, FORMAT_1):
            raise ValueError(f"{self.path} is not a localedit run store (format {self.format!r})")
        self.config = RunConfig.from_attrs(dict(self.group.attrs))
        self.run_id = str(self.group.attrs["run_id"])

    @classmethod
    def create(cls, run_dir: str | Path, config: RunConfig, masks: torch.Tensor,
               images: torch.Tensor | None = None, x_T: torch.Tensor | None = None) -> "RunStore":
        """Preallocate every array and write the inputs (region masks; images from files, or x_T of samples)."""
        n, c, s = len(config.images), config.channels, config.resolution
        for name, value, shape in (("masks", masks, (len(config.regions), s, s)),
                                   ("images", images, (n, c, s, s)), ("x_T", x_T, (n, c, s, s))):
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}; this run needs {shape}")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        final = run_dir / STORE_NAME
        if final.exists():
            raise FileExistsError(f"a run store already exists at {final}")
        for stale in run_dir.glob(f".{STORE_NAME}.*.partial"):
            shutil.rmtree(stale)
        tmp = run_dir / f".{STORE_NAME}.{uuid.uuid4().hex[:8]}.partial"
        attrs = {"format": FORMAT, "run_id": uuid.uuid4().hex[:12],
                 "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **config.to_attrs()}
        try:
            group = zarr.create_group(tmp, zarr_format=3, attributes=attrs)
            for name, labels in _coordinates(config).items():
                group.create_array(name, shape=(len(labels),), dtype=str, fill_value="", dimension_names=(name,))
                group[name][:] = np.array(labels, dtype=str)
            for name, (shape, chunks, dims, dtype, fill) in _layout(config).items():
                group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                                   dimension_names=dims)
            group["masks"][:] = masks.to(torch.float32).numpy()
            if images is not None:
                group["images"][:] = images.to(torch.float32).numpy()
            if x_T is not None:
                group["x_T"][:] = x_T.to(torch.float32).cpu().numpy()
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(run_dir)

    @classmethod
    def open_or_create(cls, run_dir: str | Path, config: RunConfig, masks: torch.Tensor,
                       images: torch.Tensor | None = None, x_T: torch.Tensor | None = None) -> "RunStore":
        """Resume the run in ``run_dir`` if it was created with the same config; else start it."""
        if not (Path(run_dir) / STORE_NAME).exists():
            return cls.create(run_dir, config, masks, images, x_T)
        store = cls(run_dir)
        store.check_resumable(config)
        return store

    def check_resumable(self, config: RunConfig) -> None:
        """ValueError unless this run was created with ``config`` (where the model was loaded from may differ)."""
        diff = self.config.differences(config)
        if diff:
            raise ValueError(f"{self.path} holds a run with other settings ({'; '.join(diff)}); "
                             f"resume it with the same settings or choose another output directory")

    def discard_partials(self) -> None:
        """Remove the temporary chunk files a killed writer left (they are never read). Only the holder
        of ``run_lock`` may call this: another run's in-flight chunks look the same."""
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    # -- regions and inputs -------------------------------------------------------------------

    @property
    def regions(self) -> list[Region]:
        masks = torch.from_numpy(self.group["masks"][:])
        return [Region(name, mask) for name, mask in zip(self.config.regions, masks)]

    def block_index(self, block: str) -> int:
        if block not in self.config.blocks:
            raise KeyError(f"{block!r} gets no subspace in this run; its blocks are {list(self.config.blocks)}")
        return self.config.blocks.index(block)

    def block_region(self, block: str) -> Region:
        """The mask of a subspace block: a region, or a region's complement."""
        index, regions = self.block_index(block), self.regions
        if index < len(regions):  # a paper-mode run has no complements (a whole-image region is fine there)
            return regions[index]
        return complements_of(regions, self.config.resolution)[index - len(regions)]

    def _tensor(self, name: str, *index) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.group[name][index]))

    def image(self, i: int) -> torch.Tensor:
        """(C, H, W) in [0, 1]: the input image, or for a sampled image the sample (once its latent is done)."""
        return self._tensor("images", i)

    def x_T(self, i: int) -> torch.Tensor:
        return self._tensor("x_T", i)

    def x_t(self, i: int) -> torch.Tensor:
        return self._tensor("x_t", i)

    # -- completion marks ---------------------------------------------------------------------

    def _done(self, name: str, *index) -> bool:
        return not math.isnan(float(self.group[name][index]))

    def _mark(self, name: str, seconds: float, *index) -> None:
        self.group[name][index] = seconds

    def latent_done(self, i: int) -> bool:
        return self._done("done_latent", i)

    def subspace_done(self, i: int, block: str) -> bool:
        return self._done("done_subspace", i, self.block_index(block))

    def pending_blocks(self, i: int) -> list[str]:
        """The blocks of image ``i`` whose subspace is not yet marked done, in ``config.blocks`` order."""
        marks = self.group["done_subspace"][i]
        return [block for block, mark in zip(self.config.blocks, marks) if math.isnan(mark)]

    def split_done(self, i: int) -> bool:
        return self._done("done_split", i)

    def progress(self) -> dict[str, tuple[int, int]]:
        """stage -> (done, total)."""
        counts = {}
        for stage in ("latent", "subspace", "split"):
            marks = self.group[f"done_{stage}"][:]
            counts[stage] = (int(np.isfinite(marks).sum()), int(marks.size))
        return counts

    # -- per-task writes (each task writes only its own chunks, then its mark) ----------------

    def write_latent(self, i: int, x_T: torch.Tensor, x_t: torch.Tensor, seconds: float,
                     image: torch.Tensor | None = None) -> None:
        values = {"x_T": _finite(f"the latent x_T of image {i}", x_T), "x_t": _finite(f"the latent x_t of image {i}", x_t)}
        if image is not None:
            values["images"] = _finite(f"the sampled image {i}", image)
        for name, value in values.items():
            self.group[name][i] = value
        self._mark("done_latent", seconds, i)

    def write_subspaces(self, i: int, subspaces: dict[str, Subspace], seconds: float) -> None:
        """Some or all blocks of image ``i`` (block name -> subspace), computed together in ``seconds``.

        Every block is checked before anything is written, and the marks go in one write after
        every chunk, so the image's blocks are marked all together or not at all.
        """
        k, rows = self.config.k, {}
        for block, sub in subspaces.items():
            what = f"the {block} subspace of image {i}"
            rows[self.block_index(block)] = (_padded(sub.basis, k, what), _padded(sub.singular_values, k, what), sub)
        for a, (basis, values, sub) in rows.items():
            self.group["subspace_basis"][i, a] = basis
            self.group["subspace_singular_values"][i, a] = values
            self._write_stats(i, a, sub)
        self.group["done_subspace"].oindex[i, sorted(rows)] = seconds

    def _write_stats(self, i: int, a: int, sub: Subspace) -> None:
        """How block ``a``'s subspace computation went (iterations, residual, converged), in this store's layout."""
        stats = (sub.iterations, sub.residual, sub.converged)
        if self.format == FORMAT_1:  # one float32 (image, block, stat) array, stats in this order
            self.group["subspace_stats"][i, a] = np.array(stats, np.float32)
            return
        for name, value in zip(SUBSPACE_STATS, stats):
            self.group[name][i, a] = value

    def subspace(self, i: int, block: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(basis (d, k), singular values (k,)) of one image's block (a region, or a region's complement)."""
        a = self.block_index(block)
        return self._tensor("subspace_basis", i, a), self._tensor("subspace_singular_values", i, a)

    def write_split(self, i: int, split: Split, seconds: float) -> None:
        k, what = self.config.k, f"the JIVE split of image {i}"
        self.group["joint_basis"][i] = _padded(split.joint, k, what)
        self.group["joint_singular_values"][i] = _padded(split.joint_singular_values, k, what)
        self.group["joint_rank"][i] = split.joint.shape[1]
        for a, (basis, sv) in enumerate(zip(split.individual, split.individual_singular_values)):
            self.group["individual_basis"][i, a] = _padded(basis, k, what)
            self.group["individual_singular_values"][i, a] = _padded(sv, k, what)
            self.group["individual_rank"][i, a] = basis.shape[1]
        self._mark("done_split", seconds, i)

    def split(self, i: int) -> Split:
        rank = int(self.group["joint_rank"][i])
        ranks = self.group["individual_rank"][i]
        individual = self._tensor("individual_basis", i)
        individual_sv = self._tensor("individual_singular_values", i)
        return Split(
            self._tensor("joint_basis", i)[:, :rank],
            self._tensor("joint_singular_values", i)[:rank],
            [individual[a, :, :r] for a, r in enumerate(ranks)],
            [individual_sv[a, :r] for a, r in enumerate(ranks)],
            {"joint": rank, "individual": [int(r) for r in ranks]},
        )

    # -- catalogue vectors (written once, by the single catalogue task) -------------------------

    def write_directions(self, vectors: torch.Tensor, ids: Sequence[str], attrs: dict) -> None:
        """(m, d) unit vectors, one per catalogue row, and their ids (the ``direction`` coordinate, so
        ``ds.directions.sel(direction="eyes/individual/0")`` reads one); replaces any earlier catalogue of this run."""
        m, d = vectors.shape
        if len(ids) != m:
            raise ValueError(f"{len(ids)} ids for {m} direction vectors")
        labels = self.group.create_array("direction", shape=(m,), chunks=(max(m, 1),), dtype=str, fill_value="",
                                         dimension_names=("direction",), overwrite=True)
        labels[:] = np.array(list(ids), dtype=str)
        array = self.group.create_array("directions", shape=(m, d), chunks=(max(m, 1), d), dtype="float32",
                                        fill_value=0.0, dimension_names=("direction", "h"), overwrite=True)
        array[:] = vectors.to(torch.float32).numpy()
        array.attrs.update(attrs)

    def directions(self) -> tuple[np.ndarray, dict]:
        return self.group["directions"][:], self.directions_attrs()

    def directions_attrs(self) -> dict:
        """The catalogue build's settings stored with its direction vectors (without reading the vectors)."""
        return dict(self.group["directions"].attrs)
