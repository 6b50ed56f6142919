"""Image regions (binary masks) that edits are restricted to and evaluated on.

Regions come from boxes (pixel or relative coordinates), from mask PNGs, or from the presets
in ``data/regions.json``, which are measured against the synthetic-face generator and written
in relative coordinates so they hold at any resolution.

Regions may overlap (``left_eye`` lies inside ``eyes``); that is allowed but reported with a
``RegionOverlapWarning``, because edits found for overlapping regions are not independent.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from localedit.utils.imagefile import load_mask
from localedit.utils.paths import DATA_DIR

PRESETS = DATA_DIR / "regions.json"


class RegionOverlapWarning(UserWarning):
    """Two regions share pixels."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields has no single truth value
class Region:
    """A named binary mask over an image, shape (H, W), float32 in {0, 1}."""

    name: str
    mask: torch.Tensor

    def __post_init__(self):
        mask = torch.as_tensor(self.mask, dtype=torch.float32)
        if mask.ndim != 2:
            raise ValueError(f"region {self.name!r}: mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"region {self.name!r}: mask values must be 0 or 1")
        object.__setattr__(self, "mask", mask)

    @property
    def fraction(self) -> float:
        """Share of the image the region covers."""
        return float(self.mask.mean())

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())


def _to_pixel(value: float, size: int, round_up: bool) -> int:
    """Relative coordinate -> pixel edge, rounding outwards so the box never shrinks."""
    x = value * size
    if abs(x - round(x)) < 1e-6:  # 0.3 * 10 is 3.0000000000000004, not 4
        return round(x)
    return math.ceil(x) if round_up else math.floor(x)


def box(name: str, top, left, bottom, right, size: int, relative: bool = False) -> Region:
    """Axis-aligned box; bottom and right are exclusive.

    Pixel coordinates are integers in [0, size]; relative ones are fractions in [0, 1] of the
    image side, rounded outwards to whole pixels.
    """
    coords = {"top": top, "left": left, "bottom": bottom, "right": right}
    limit = 1 if relative else size
    for key, value in coords.items():
        if not 0 <= value <= limit:
            unit = "relative coordinates lie in [0, 1]" if relative else f"pixel coordinates lie in [0, {size}]"
            raise ValueError(f"region {name!r}: {key}={value} is out of bounds ({unit})")
        if not relative and value != int(value):
            raise ValueError(f"region {name!r}: pixel coordinate {key}={value} is not an integer; pass relative=True?")
    if relative:
        top, left = _to_pixel(top, size, False), _to_pixel(left, size, False)
        bottom, right = _to_pixel(bottom, size, True), _to_pixel(right, size, True)
    top, left, bottom, right = int(top), int(left), int(bottom), int(right)
    if bottom <= top or right <= left:
        raise ValueError(
            f"region {name!r}: empty box (rows {top}:{bottom}, cols {left}:{right}); bottom/right are exclusive"
        )
    mask = torch.zeros(size, size)
    mask[top:bottom, left:right] = 1
    return Region(name, mask)


def from_mask_image(name: str, path: str | Path, size: int) -> Region:
    """Region from a binary mask image (white = inside, or opaque on transparent), already size x size."""
    try:
        return Region(name, load_mask(path, size))
    except ValueError as err:
        raise ValueError(f"region {name!r}: {err}") from err


def load_presets(path: str | Path | None = None) -> dict[str, dict]:
    """Region entries of a regions JSON file (default: the bundled ``data/regions.json``)."""
    path = Path(path) if path is not None else PRESETS
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read regions file {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
        raise ValueError(f"{path}: expected an object with a 'regions' mapping")
    return data["regions"]


def _from_entry(name: str, entry: dict, size: int, base_dir: Path) -> Region:
    if not isinstance(entry, dict):
        raise ValueError(f"region {name!r}: expected an object with 'box' or 'mask', got {entry!r}")
    unknown = set(entry) - {"box", "relative", "mask", "description"}
    if unknown:
        raise ValueError(f"region {name!r}: unknown keys {sorted(unknown)}")
    if ("box" in entry) == ("mask" in entry):
        raise ValueError(f"region {name!r}: give exactly one of 'box' or 'mask'")
    if "mask" in entry:
        return from_mask_image(name, base_dir / entry["mask"], size)
    if len(entry["box"]) != 4:
        raise ValueError(f"region {name!r}: box must be [top, left, bottom, right], got {entry['box']}")
    return box(name, *entry["box"], size=size, relative=bool(entry.get("relative", False)))


def resolve_regions(spec: str | Path | Sequence[str], size: int) -> list[Region]:
    """Regions from preset names ("eyes,mouth" or ["eyes", "mouth"]) or a regions JSON file.

    A JSON file uses the schema of ``data/regions.json``; its mask paths are relative to the
    file. The result is validated (see ``validate_regions``).
    """
    if isinstance(spec, Path) or (isinstance(spec, str) and (spec.endswith(".json") or Path(spec).is_file())):
        path = Path(spec)
        regions = [_from_entry(n, e, size, path.parent) for n, e in load_presets(path).items()]
        if not regions:
            raise ValueError(f"regions file {path} defines no regions")
    else:
        names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        names = [n for n in names if n]
        if not names:
            raise ValueError("no regions given")
        presets = load_presets()
        unknown = [n for n in names if n not in presets]
        if unknown:
            raise ValueError(f"unknown region preset(s) {unknown}; available: {', '.join(presets)}")
        regions = [_from_entry(n, presets[n], size, PRESETS.parent) for n in names]
    validate_regions(regions, size)
    return regions


def validate_regions(regions: Sequence[Region], size: int) -> None:
    """Raise on unusable regions; warn (``RegionOverlapWarning``) on overlapping ones."""
    seen = set()
    for r in regions:
        if r.name in seen:
            raise ValueError(f"duplicate region name {r.name!r}")
        seen.add(r.name)
        if tuple(r.mask.shape) != (size, size):
            h, w = r.mask.shape
            raise ValueError(f"region {r.name!r}: mask is {w}x{h} but the images are {size}x{size}")
        if r.pixels == 0:
            raise ValueError(f"region {r.name!r}: mask is empty")
    for a, b in itertools.combinations(regions, 2):
        shared = int((a.mask * b.mask).sum())
        if shared:
            smaller = a if a.pixels <= b.pixels else b
            warnings.warn(
                f"regions {a.name!r} and {b.name!r} overlap on {shared} px "
                f"({shared / smaller.pixels:.0%} of {smaller.name!r}); edits for them are not independent",
                RegionOverlapWarning,
                stacklevel=2,
            )


def complement(regions: Sequence[Region], size: int, name: str = "rest") -> Region:
    """Everything outside the union of the regions (e.g. to check an edit stays local)."""
    union = torch.zeros(size, size)
    for r in regions:
        if tuple(r.mask.shape) != (size, size):
            raise ValueError(f"region {r.name!r}: mask shape {tuple(r.mask.shape)} does not match size {size}")
        union = torch.maximum(union, r.mask)
    if bool(union.all()):
        raise ValueError(f"regions {[r.name for r in regions]} cover the whole image; the complement is empty")
    return Region(name, 1 - union)
