"""A job's slide features in the folder layouts CLAM and TRIDENT users already have code for.

- ``clam``: ``OUT/h5_files/<slide>.h5`` (datasets ``features`` (N, D) float32 and ``coords`` (N, 2), the coords
  carrying ``patch_size`` (level-0 px) and ``patch_level`` 0, as CLAM's heatmap code reads them) and
  ``OUT/pt_files/<slide>.pt`` (the features as a torch tensor, what CLAM's MIL training loads).
- ``trident``: ``OUT/<mag>x_<tile>px_<overlap>px_overlap/features_<tag>/<slide>.h5`` with the same two datasets;
  ``coords`` carries ``patch_size``, ``patch_size_level0`` and ``target_magnification``.

Every file is written atomically. gcmae's own provenance (encoder, digest, stain normalisation, tile list digest)
is copied into each file's root attributes, and a slide whose exported file records the same provenance as its
current features is skipped, so a re-run adds new slides and redoes re-extracted ones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from gcmae.io.atomic import atomic_path
from gcmae.slide.bags import Bag, find_bags, load_bag, read_attrs, write_attrs

log = logging.getLogger(__name__)
LAYOUTS = ("clam", "trident")
# what identifies the features a slide's export was made from
PROVENANCE = ("coords_sha256", "weights_id", "pool", "img_size", "stain_id", "num_tiles")


@dataclass
class ExportResult:
    slide_id: str
    files: list[Path]
    skipped: bool


def _up_to_date(path: Path, bag: Bag) -> bool:
    """True when `path` exists and records the provenance of `bag`'s features."""
    if not path.is_file():
        return False
    try:
        stored = read_attrs(path)
    except (OSError, ValueError):
        return False
    return all(stored.get(k) == bag.attrs.get(k) for k in PROVENANCE)


def _write_h5(path: Path, bag: Bag, coord_attrs: dict[str, object]) -> Path:
    if bag.coords is None:
        raise ValueError(f"{bag.path}: no tile coordinates, which the {path.parent.name} layout needs")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("features", data=bag.features.astype(np.float32))
            coords = h5.create_dataset("coords", data=bag.coords.astype(np.int64))
            for key, value in coord_attrs.items():
                coords.attrs[key] = value
            write_attrs(h5, {k: v for k, v in bag.attrs.items() if k != "complete"})
    return path


def _write_pt(path: Path, bag: Bag) -> Path:
    with atomic_path(path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(bag.features, dtype=np.float32)), tmp)
    return path


def magnification(bag: Bag) -> int | None:
    """The tiles' objective magnification (10 / µm per px, e.g. 20 at 0.5), or None without a known MPP."""
    mpp = bag.attrs.get("tile_mpp")
    return round(10.0 / float(mpp)) if mpp and np.isfinite(float(mpp)) else None


def trident_folder(bag: Bag) -> str:
    """TRIDENT's patch-set folder name, e.g. ``20x_224px_0px_overlap`` (``native`` without a known MPP)."""
    mag = magnification(bag)
    extent, step, size = (int(bag.attrs.get(k, 0) or 0) for k in ("extent", "step", "tile_size"))
    overlap = round((extent - step) * size / extent) if extent else 0  # in output px, as TRIDENT names it
    return f"{'native' if mag is None else f'{mag}x'}_{size}px_{overlap}px_overlap"


def export_slide(bag: Bag, out: Path, layout: str, tag: str) -> ExportResult:
    """Write one slide's features in `layout` under `out` (skipped when its files already exist)."""
    extent = int(bag.attrs.get("extent", 0))
    if layout == "clam":
        h5_path, pt_path = out / "h5_files" / f"{bag.slide_id}.h5", out / "pt_files" / f"{bag.slide_id}.pt"
        if _up_to_date(h5_path, bag) and pt_path.exists():
            return ExportResult(bag.slide_id, [h5_path, pt_path], True)
        files = [_write_h5(h5_path, bag, {"patch_size": extent, "patch_level": 0}), _write_pt(pt_path, bag)]
        return ExportResult(bag.slide_id, files, False)
    if layout == "trident":
        path = out / trident_folder(bag) / f"features_{tag}" / f"{bag.slide_id}.h5"
        if _up_to_date(path, bag):
            return ExportResult(bag.slide_id, [path], True)
        attrs = {"patch_size": int(bag.attrs.get("tile_size", 0)), "patch_size_level0": extent}
        if magnification(bag) is not None:
            attrs["target_magnification"] = magnification(bag)
        return ExportResult(bag.slide_id, [_write_h5(path, bag, attrs)], False)
    raise ValueError(f"unknown layout {layout!r} (use {', '.join(LAYOUTS)})")


def export_features(job_dir: str | Path, out: str | Path, layout: str = "clam", tag: str | None = None) -> list[ExportResult]:
    """Every slide of `job_dir` that has features (of `tag` when several encoders were used) into `out`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (use {', '.join(LAYOUTS)})")
    results = []
    for slide_id, path in find_bags(job_dir, tag).items():
        bag = load_bag(path, slide_id=slide_id)
        results.append(export_slide(bag, Path(out), layout, tag or path.stem.removeprefix("features_")))
        log.info("%s: %s", slide_id, "already exported" if results[-1].skipped else "exported")
    return results
