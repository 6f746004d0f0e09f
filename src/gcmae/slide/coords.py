"""Tile coordinates of one slide in HDF5 (``coords.h5``): the hand-off from tiling to everything per slide.

Layout: datasets ``coords`` (N x 2 int64, level-0 ``(x, y)`` of each tile's top-left corner) and
``tissue_fraction`` (N float32); root attributes ``slide_path``, ``name``, ``level``, ``read_size``, ``step``,
``extent``, ``n_cols``, ``n_rows``, ``tile_size``, ``mpp`` and ``slide_mpp`` (NaN when unknown), ``width``,
``height``, ``min_tissue``, ``overlap``, ``gcmae_version``, ``created``, plus any other attributes given in
:attr:`SlideTiles.attrs` (dicts and lists are stored as JSON strings and listed in ``json_attrs``).

A tile is read with ``reader.read_region((x, y), grid.level, (grid.read_size, grid.read_size))`` and resized
to ``grid.tile_size`` px (``gcmae.slide.tiling.read_tile``); it covers level-0 ``[x, x + grid.extent) x
[y, y + grid.extent)``. The ``overlap`` attribute is in output px, as requested (``--overlap``); in level-0 px it
is ``grid.extent - grid.step``. ``gcmae tile`` also stores ``magnification`` (NaN if not used), ``mask_size``,
``remove_pen`` and ``tissue_threshold`` (the saturation threshold of the tissue mask).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gcmae import __version__
from gcmae.io.atomic import atomic_path

COORDS_FILENAME = "coords.h5"
FORMAT = "gcmae.slide.coords"
FORMAT_VERSION = 1
_GRID_ATTRS = ("level", "read_size", "step", "extent", "n_cols", "n_rows", "tile_size")
_REQUIRED_ATTRS = ("slide_path", "name", *_GRID_ATTRS, "mpp", "slide_mpp", "width", "height")
_RESERVED_ATTRS = frozenset({*_REQUIRED_ATTRS, "format", "format_version", "json_attrs"})


class CoordsFileError(ValueError):
    """A coordinates file is missing a part, corrupt, or not written by gcmae; the message names the file."""


@dataclass(frozen=True)
class TileGrid:
    """Grid geometry: tile ``(row, col)`` starts at level-0 ``(col*step, row*step)``, covers ``extent`` level-0
    px per side, and is read as ``read_size`` x ``read_size`` px at ``level``, then resized to ``tile_size``."""

    level: int  # pyramid level read from
    read_size: int  # px read at that level per tile side
    step: int  # level-0 px between tile origins
    extent: int  # level-0 px covered by one tile side (== step without overlap)
    n_cols: int
    n_rows: int
    tile_size: int  # output px per tile side
    mpp: float | None  # µm per output pixel (None if unknown)

    @property
    def overlap(self) -> int:
        """Level-0 px shared by two neighbouring tiles."""
        return self.extent - self.step


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value
class SlideTiles:
    """The tiles kept on one slide, with the grid they come from and the slide's metadata."""

    slide_path: Path  # absolute path of the slide file
    name: str  # the slide's safe name (its folder name in the job dir)
    grid: TileGrid
    coords: np.ndarray  # (N, 2) int64, level-0 (x, y) of each tile's top-left corner
    tissue_fraction: np.ndarray  # (N,) float32
    slide_mpp: float | None  # level-0 µm/px used (metadata or user-given)
    dimensions: tuple[int, int]  # level-0 (width, height)
    attrs: dict[str, Any] = field(default_factory=dict)  # everything else stored (settings, version, created)

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _none_if_nan(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def attr_to_python(value: Any) -> Any:
    """An h5py attribute value as plain Python (str, bool, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [attr_to_python(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_arrays(coords: np.ndarray, fractions: np.ndarray, where: str) -> None:
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise CoordsFileError(f"{where}: coords must have shape (N, 2), got {coords.shape}")
    if fractions.shape != (coords.shape[0],):
        raise CoordsFileError(f"{where}: tissue_fraction must have shape ({coords.shape[0]},), "
                              f"got {fractions.shape}")


def write_coords_h5(path: str | Path, tiles: SlideTiles) -> None:
    """Write ``tiles`` to ``path`` atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    coords = np.asarray(tiles.coords)
    if coords.size and not np.issubdtype(coords.dtype, np.integer):
        raise CoordsFileError(f"{path}: coords must be integers, got dtype {coords.dtype}")
    coords = coords.astype(np.int64).reshape(-1, 2) if coords.size == 0 else coords.astype(np.int64)
    fractions = np.asarray(tiles.tissue_fraction, dtype=np.float32).reshape(-1)
    _check_arrays(coords, fractions, str(path))
    extra = dict(tiles.attrs)
    clash = sorted(_RESERVED_ATTRS & extra.keys())
    if clash:
        raise CoordsFileError(f"{path}: attrs {clash} are stored from the SlideTiles fields; remove them from attrs")
    extra.setdefault("min_tissue", math.nan)
    extra.setdefault("overlap", tiles.grid.overlap)
    extra.setdefault("gcmae_version", __version__)
    extra.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    json_keys = sorted(k for k, v in extra.items() if isinstance(v, (dict, list, tuple)))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("coords", data=coords)
            h5.create_dataset("tissue_fraction", data=fractions)
            a = h5.attrs
            a["format"], a["format_version"] = FORMAT, FORMAT_VERSION
            a["slide_path"], a["name"] = str(Path(tiles.slide_path).absolute()), str(tiles.name)
            for key in _GRID_ATTRS:
                a[key] = int(getattr(tiles.grid, key))
            a["mpp"], a["slide_mpp"] = _nan_if_none(tiles.grid.mpp), _nan_if_none(tiles.slide_mpp)
            a["width"], a["height"] = int(tiles.dimensions[0]), int(tiles.dimensions[1])
            for key, value in extra.items():
                a[key] = json.dumps(value) if key in json_keys else (_nan_if_none(value) if value is None else value)
            a["json_attrs"] = json.dumps(json_keys)


def read_coords_h5(path: str | Path) -> SlideTiles:
    """Read a file written by :func:`write_coords_h5`. Raises FileNotFoundError, or :class:`CoordsFileError`
    naming the file and what is wrong when it is corrupt, truncated or not a gcmae coordinates file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coordinates file not found: {path}")
    try:
        with h5py.File(path, "r") as h5:
            missing = [k for k in ("coords", "tissue_fraction") if k not in h5]
            missing += [k for k in _REQUIRED_ATTRS if k not in h5.attrs]
            if missing:
                raise CoordsFileError(f"{path} is not a gcmae coordinates file: missing {', '.join(missing)}")
            coords, fractions = h5["coords"][()], h5["tissue_fraction"][()]
            attrs = {k: attr_to_python(v) for k, v in h5.attrs.items()}
    except CoordsFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CoordsFileError(f"cannot read coordinates file {path}: corrupt or not HDF5 ({exc})") from exc
    if coords.size and not np.issubdtype(coords.dtype, np.integer):
        raise CoordsFileError(f"{path}: coords must be integers, got dtype {coords.dtype}")
    coords = coords.astype(np.int64).reshape(-1, 2) if coords.size == 0 else coords.astype(np.int64)
    _check_arrays(coords, fractions, str(path))
    try:
        grid = TileGrid(**{k: int(attrs[k]) for k in _GRID_ATTRS}, mpp=_none_if_nan(attrs["mpp"]))
        slide_mpp = _none_if_nan(attrs["slide_mpp"])
        dimensions = (int(attrs["width"]), int(attrs["height"]))
        json_keys = json.loads(attrs.get("json_attrs", "[]"))
        extra = {k: (json.loads(v) if k in json_keys else v) for k, v in attrs.items() if k not in _RESERVED_ATTRS}
    except (TypeError, ValueError) as exc:
        raise CoordsFileError(f"{path}: bad metadata attribute ({exc})") from exc
    return SlideTiles(slide_path=Path(attrs["slide_path"]), name=str(attrs["name"]), grid=grid, coords=coords,
                      tissue_fraction=fractions.astype(np.float32), slide_mpp=slide_mpp, dimensions=dimensions,
                      attrs=extra)
