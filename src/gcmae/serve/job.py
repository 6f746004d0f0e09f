"""What a job folder holds, read without writing anything: its slides, their status, overlays and predictions.

A job folder is made by `gcmae tile` (one sub-folder per slide with ``coords.h5``, ``tissue.geojson``,
``thumbnail.png``; ``failures.csv``; ``.<name>.lock`` while a slide is being tiled), then filled by
`gcmae extract` (``features_<tag>.h5``), `gcmae heatmap` (``heatmap_<classifier>.csv``) and `gcmae mil predict`
with its ``--out`` inside the job (``<out>/predictions.csv``, ``<out>/attention/<slide>.csv``). A `gcmae diagnose`
output folder is a job of one slide with ``attention.csv``, ``heatmap_tile_classifier.csv`` and
``diagnosis.json`` beside the slide's folder.

Every path handed out lies inside the job folder once symlinks are resolved (:func:`inside`), except the slide
files themselves, which are the ones the job's own ``coords.h5`` files record.
"""
from __future__ import annotations

import csv
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcmae.io.paths import safe_name
from gcmae.slide.coords import COORDS_FILENAME, CoordsFileError, SlideTiles, read_coords_h5

log = logging.getLogger(__name__)

FAILURES_FILENAME = "failures.csv"
EXTRACT_FAILURES_FILENAME = "extract_failures.csv"


def inside(root: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved when it is an existing file inside `root` (also resolved), else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(root.resolve()) else None


@dataclass(frozen=True)
class Overlay:
    """One per-tile score layer of a slide: a `gcmae heatmap` probability or ABMIL attention CSV."""

    id: str  # url-safe: "heatmap-<classifier>" or "attention" / "attention-<n>"
    kind: str  # "heatmap" | "attention"
    label: str
    csv: Path
    column: str  # "prob" | "attention"


@dataclass
class SlideEntry:
    """One slide of the job as the index and slide pages show it."""

    id: str
    folder: Path | None
    status: list[str] = field(default_factory=list)  # tiled, features, heatmap, diagnosis, tiling, failed, ...
    reason: str | None = None  # why it failed
    tiles: SlideTiles | None = None
    overlays: list[Overlay] = field(default_factory=list)
    prediction: dict[str, Any] | None = None  # {"predicted": str, "probabilities": {class: p}}

    @property
    def slide_path(self) -> Path | None:
        return self.tiles.slide_path if self.tiles is not None else None

    def summary(self) -> dict[str, Any]:
        """The JSON of this slide in the slide list."""
        t = self.tiles
        return {"id": self.id, "status": self.status, "reason": self.reason,
                "num_tiles": len(t) if t is not None else None,
                "slide": t.slide_path.name if t is not None else None,
                "dimensions": list(t.dimensions) if t is not None else None,
                "mpp": t.slide_mpp if t is not None else None,
                "thumbnail": self.folder is not None and (self.folder / "thumbnail.png").is_file(),
                "overlays": [o.id for o in self.overlays], "prediction": self.prediction}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        log.warning("cannot read %s: %s", path, err)
        return []


def _prediction_rows(path: Path) -> dict[str, dict[str, Any]]:
    """slide_id -> {"predicted", "probabilities"} of a `gcmae mil predict` predictions.csv."""
    out = {}
    for row in _read_csv(path):
        try:
            probs = {k.removeprefix("prob_"): float(v) for k, v in row.items() if k and k.startswith("prob_") and v}
        except ValueError as err:
            log.warning("%s: slide %s: %s", path, row.get("slide_id"), err)
            continue
        if row.get("slide_id"):
            out[row["slide_id"]] = {"predicted": row.get("predicted"), "probabilities": probs}
    return out


class JobIndex:
    """The slides of one job folder, re-scanned on every call (a job may still be running); each slide's
    ``coords.h5`` is parsed once per modification time."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"job folder not found: {root}")
        self._tiles: dict[Path, tuple[int, SlideTiles]] = {}
        self._lock = threading.Lock()

    def _file(self, *parts: str) -> Path | None:
        return inside(self.root, self.root.joinpath(*parts))

    def _coords(self, path: Path) -> SlideTiles:
        mtime = path.stat().st_mtime_ns
        with self._lock:
            hit = self._tiles.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
        tiles = read_coords_h5(path)
        with self._lock:
            self._tiles[path] = (mtime, tiles)
        return tiles

    def tiles(self, slide_id: str) -> SlideTiles | None:
        """The tiling of one slide, without scanning the job (the DZI routes ask for it on every tile): None unless
        `slide_id` names a real folder directly inside the job whose coords.h5 lies inside it and reads."""
        if not slide_id or slide_id.startswith(".") or "/" in slide_id or "\\" in slide_id:
            return None
        folder = self.root / slide_id
        if folder.is_symlink() or not folder.is_dir():
            return None
        coords = inside(self.root, folder / COORDS_FILENAME)
        try:
            return self._coords(coords) if coords is not None else None
        except (CoordsFileError, OSError):
            return None

    def _folders(self) -> list[Path]:
        """Slide folders: real directories inside the job (a symlink out of it is not one)."""
        found = []
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or not p.is_dir() or p.is_symlink():
                continue
            if (p / COORDS_FILENAME).exists() or self.root.joinpath(f".{p.name}.lock").exists() \
                    or any(p.glob("features_*.h5")):
                found.append(p)
        return found

    def _mil_outputs(self) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
        """(attention folder, predictions) of every `mil predict --out` folder directly inside the job."""
        outs = []
        for p in sorted(self.root.iterdir()):
            pred = inside(self.root, p / "predictions.csv")
            if p.is_dir() and not p.is_symlink() and pred and (p / "attention").is_dir():
                outs.append((p / "attention", _prediction_rows(pred)))
        return outs

    def slides(self) -> dict[str, SlideEntry]:
        """id -> entry of every slide of the job, failed ones included, in name order."""
        entries: dict[str, SlideEntry] = {}
        mil = self._mil_outputs()
        diagnosis = self._diagnosis()
        folders = self._folders()
        for folder in folders:
            entries[folder.name] = self._entry(folder, mil, diagnosis if len(folders) == 1 else None)
        for name, reason in self._failures().items():
            entry = entries.setdefault(name, SlideEntry(name, None))
            entry.status.append("failed")
            entry.reason = reason
        return dict(sorted(entries.items()))

    def _entry(self, folder: Path, mil: list[tuple[Path, dict]], diagnosis: dict[str, Any] | None) -> SlideEntry:
        entry = SlideEntry(folder.name, folder)
        coords = inside(self.root, folder / COORDS_FILENAME)
        if coords is None:
            entry.status.append("tiling" if self.root.joinpath(f".{folder.name}.lock").exists() else "incomplete")
            return entry
        try:
            entry.tiles = self._coords(coords)
        except (CoordsFileError, OSError) as err:
            entry.status.append("failed")
            entry.reason = str(err)
            return entry
        entry.status.append("tiled")
        if any(folder.glob("features_*.h5")):
            entry.status.append("features")
        for csv_path in sorted(folder.glob("heatmap_*.csv")):
            if inside(self.root, csv_path):
                name = csv_path.stem.removeprefix("heatmap_")
                overlay_id = f"heatmap-{_url_id(name)}"
                while any(o.id == overlay_id for o in entry.overlays):  # names that reduce to the same id
                    overlay_id += "_"
                entry.overlays.append(Overlay(overlay_id, "heatmap", f"P(positive): {name}",
                                              csv_path, "prob"))
        attention = [p for p in (folder / "attention.csv",) if inside(self.root, p)]
        if diagnosis is not None:
            for name in ("heatmap_tile_classifier.csv",):
                if self._file(name):
                    entry.overlays.append(Overlay("heatmap-tile_classifier", "heatmap",
                                                  "P(positive): tile classifier", self.root / name, "prob"))
            attention += [p for p in (self.root / "attention.csv",) if inside(self.root, p)]
            entry.prediction = {k: diagnosis.get(k) for k in ("predicted", "probabilities")}
        for att_dir, predictions in mil:
            att = att_dir / f"{safe_name(folder.name)}.csv"
            if inside(self.root, att):
                attention.append(att)
            if folder.name in predictions and entry.prediction is None:
                entry.prediction = predictions[folder.name]
        for i, path in enumerate(attention):
            entry.overlays.append(Overlay("attention" if i == 0 else f"attention-{i}", "attention",
                                          f"ABMIL attention ({path.parent.relative_to(self.root).as_posix() or '.'})",
                                          path, "attention"))
        if any(o.kind == "heatmap" for o in entry.overlays):
            entry.status.append("heatmap")
        if any(o.kind == "attention" for o in entry.overlays) or entry.prediction:
            entry.status.append("diagnosis")
        return entry

    def _diagnosis(self) -> dict[str, Any] | None:
        path = self._file("diagnosis.json")
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("cannot read %s: %s", path, err)
            return None

    def _failures(self) -> dict[str, str]:
        """slide name -> reason, from failures.csv (tiling: path, reason) and extract_failures.csv (slide,
        reason)."""
        out: dict[str, str] = {}
        for filename, column, stage in ((FAILURES_FILENAME, "path", "tiling"),
                                        (EXTRACT_FAILURES_FILENAME, "slide", "feature extraction")):
            path = self._file(filename)
            for row in _read_csv(path) if path else []:
                if row.get(column):
                    name = safe_name(Path(row[column]).stem) if column == "path" else row[column]
                    out[name] = f"{stage}: {row.get('reason') or 'unknown reason'}"
        return out

    def thumbnail(self, entry: SlideEntry) -> Path | None:
        """The slide's thumbnail.png when it lies inside the job."""
        return inside(self.root, entry.folder / "thumbnail.png") if entry.folder else None

    def tissue(self, entry: SlideEntry) -> Path | None:
        """The slide's tissue.geojson when it lies inside the job."""
        return inside(self.root, entry.folder / "tissue.geojson") if entry.folder else None


def _url_id(name: str) -> str:
    """`name` reduced to letters, digits and -_. (overlay ids go into URLs)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "x"

