"""Per-slide feature files ("bags"): the HDF5 layout `gcmae extract` writes, and loading any bag for MIL.

A slide's features live in ``JOB_DIR/<slide>/features_<tag>.h5`` with datasets ``features`` (N, D) float32 and
``coords`` (N, 2) int64 (level-0 x, y of each tile's top-left corner, in the order of ``coords.h5``) and root
attributes recording where they come from (slide, encoder weights and their digest, pool, tile geometry, time);
``complete`` is set last, so a file without it was never finished. ``<tag>`` is ``<weights stem>-<digest8>-<pool>``.

Bags for MIL may also be generic per-slide files in one folder: ``<slide_id>.h5`` / ``.npz`` (an array
``features``, optionally ``coords``) or ``<slide_id>.pt`` (a tensor, or a dict with ``features`` and optionally
``coords``; read with ``weights_only=True``). Every array is checked before use (see ``gcmae.io.arrays``).
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from gcmae.io.arrays import ArrayFileError, load_array_file, open_h5, read_h5_arrays
from gcmae.slide.coords import attr_to_python

FEATURES_PREFIX = "features_"
FORMAT = "gcmae-slide-features"
FORMAT_VERSION = 1
BAG_SUFFIXES = (".h5", ".hdf5", ".npz", ".pt", ".pth")
# what must agree between a feature file and a model trained on (or a classifier fitted to) such features
MATCH_KEYS = ("weights_id", "pool", "img_size", "stain_id")  # stain_id absent: no stain normalisation
_BAG_ARRAYS = {"features": (2, "f"), "coords": (2, "iu")}


@dataclass
class Bag:
    """One slide's tile features (N, D), their level-0 coordinates (N, 2) when known, and the file's metadata."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def feature_filename(tag: str) -> str:
    return f"{FEATURES_PREFIX}{tag}.h5"


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (identifies a tile list)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _root_attrs(fh: h5py.File, path: Path) -> dict[str, Any]:
    try:
        return {k: attr_to_python(v) for k, v in fh.attrs.items()}
    except OSError as err:
        raise ArrayFileError(f"{path}: not a readable HDF5 file ({err})") from None


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of an HDF5 file as plain Python values ({} for other file types)."""
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        return {}
    with open_h5(path) as fh:
        return _root_attrs(fh, path)


def write_attrs(h5: h5py.File, attrs: dict[str, Any]) -> None:
    """Store `attrs` on the file's root; None values are left out (HDF5 has no null), dicts become JSON."""
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, str):
            value = str(value)  # plain str: subclasses such as torch's version string have no HDF5 type
        h5.attrs[key] = value


def is_complete_features(path: Path, expect: dict[str, Any]) -> bool:
    """True when `path` is a finished feature file whose attributes equal every key of `expect`."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            attrs = _root_attrs(fh, path)
            n_feat, n_coords = fh["features"].shape[0], fh["coords"].shape[0]
    except (ArrayFileError, OSError, KeyError):
        return False
    if not attrs.get("complete") or n_feat != n_coords or n_feat != attrs.get("num_tiles"):
        return False
    return all(attrs.get(k) == v for k, v in expect.items())


def _check_features(path: Path, features: np.ndarray) -> np.ndarray:
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ArrayFileError(f"{path}: features have shape {features.shape}; expected (tiles >= 1, dim >= 1)")
    if not np.isfinite(features).all():
        raise ArrayFileError(f"{path}: features contain NaN or Inf")
    return features.astype(np.float32, copy=False)


def _check_coords(path: Path, coords: np.ndarray | None, n: int) -> np.ndarray | None:
    if coords is None:
        return None
    if coords.ndim != 2 or coords.shape != (n, 2):
        raise ArrayFileError(f"{path}: coords have shape {coords.shape}; expected ({n}, 2) for {n} tiles")
    return coords.astype(np.int64, copy=False)


def _load_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files; the message names the file
        raise ArrayFileError(f"{path}: not a readable tensor file ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise ArrayFileError(f"{path}: dict without a 'features' entry (has {sorted(map(str, obj))})")
        feats, coords = obj["features"], obj.get("coords")
    else:
        feats, coords = obj, None
    for name, t in (("features", feats), ("coords", coords)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ArrayFileError(f"{path}: {name} is a {type(t).__name__}, not a tensor")
    if not feats.is_floating_point():
        raise ArrayFileError(f"{path}: features have dtype {feats.dtype}; expected floating point")
    return feats.float().numpy(), None if coords is None else coords.long().numpy()


def load_bag(path: str | Path, slide_id: str | None = None) -> Bag:
    """The bag stored in `path` (.h5/.hdf5/.npz/.pt/.pth); ArrayFileError naming the file when it is not one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in BAG_SUFFIXES:
        raise ArrayFileError(f"{path}: unsupported bag file type {suffix!r} (use {', '.join(BAG_SUFFIXES)})")
    if not path.is_file():
        raise ArrayFileError(f"bag file not found: {path}")
    attrs: dict[str, Any] = {}
    if suffix in (".pt", ".pth"):
        feats, coords = _load_pt(path)
    elif suffix == ".npz":
        arrays = load_array_file(path, _BAG_ARRAYS, optional=("coords",))
        feats, coords = arrays["features"], arrays.get("coords")
    else:
        with open_h5(path) as fh:
            arrays = read_h5_arrays(fh, path, _BAG_ARRAYS, optional=("coords",))
            attrs = _root_attrs(fh, path)
        feats, coords = arrays["features"], arrays.get("coords")
        if attrs.get("format") == FORMAT and not attrs.get("complete"):
            raise ArrayFileError(f"{path}: unfinished feature file (no 'complete' mark); re-run gcmae extract")
    feats = _check_features(path, feats)
    return Bag(slide_id or attrs.get("slide_name") or path.stem, feats, _check_coords(path, coords, len(feats)),
               attrs, path)


def _job_feature_files(folder: Path, tag: str | None) -> dict[str, Path]:
    """slide id -> feature file, for a JOB_DIR (one sub-folder per slide holding features_<tag>.h5)."""
    found: dict[str, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(sub.glob(f"{FEATURES_PREFIX}*.h5"))
        if tag is not None:
            files = [f for f in files if f.name == feature_filename(tag)]
        if len(files) > 1:
            tags = [f.name[len(FEATURES_PREFIX):-3] for f in files]
            raise ValueError(f"{sub}: several feature files ({', '.join(tags)}); choose one with --tag")
        if files:
            found[sub.name] = files[0]
    return found


def find_bags(features: str | Path, tag: str | None = None) -> dict[str, Path]:
    """slide id -> bag file under `features`: one bag file; a JOB_DIR of `gcmae extract` (the sub-folder name is
    the slide id; `tag` picks among several feature files); or a folder of per-slide files (the stem is the id)."""
    features = Path(features)
    if features.is_file():
        bag = load_bag(features)  # validates; the id comes from its metadata when recorded
        return {bag.slide_id: features}
    if not features.is_dir():
        raise FileNotFoundError(f"features not found: {features} (a bag file, a JOB_DIR or a folder of bags)")
    found = _job_feature_files(features, tag)
    for f in sorted(features.iterdir()):
        if f.is_file() and f.suffix.lower() in BAG_SUFFIXES and not f.name.startswith("."):
            if f.stem in found:
                raise ValueError(f"{features}: slide id {f.stem!r} has both {f.name} and {found[f.stem]}")
            found[f.stem] = f
    if not found:
        what = f"{feature_filename(tag)}" if tag else f"{FEATURES_PREFIX}*.h5"
        raise FileNotFoundError(f"no bags in {features}: neither <slide>/{what} (run gcmae extract) nor per-slide "
                                f"{'/'.join(BAG_SUFFIXES)} files")
    return found


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """slide_id -> label from a CSV with a header `slide_id,label` (other columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Excel's UTF-8) is dropped
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"slide_id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with the columns slide_id,label (found {reader.fieldnames})")
        labels: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            sid, label = (row["slide_id"] or "").strip(), (row["label"] or "").strip()
            if not sid or not label:
                raise ValueError(f"{path}: line {line}: empty slide_id or label")
            if sid in labels:
                raise ValueError(f"{path}: line {line}: slide_id {sid!r} appears twice")
            labels[sid] = label
    if not labels:
        raise ValueError(f"{path}: no rows")
    return labels


def sorted_classes(labels: list[str]) -> list[str]:
    """Distinct labels in a stable order: numerically when all are integers (0 < 1 < 10), else alphabetically."""
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)
