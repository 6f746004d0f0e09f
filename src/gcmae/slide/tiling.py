"""Tile slides into non-overlapping tissue patches on a regular grid.

Output per slide, under ``out_dir/<slide_stem>/`` (the stem made a safe folder name):
``tiles/x{X}_y{Y}.png`` (level-0 coordinates of the tile's top-left corner), ``tissue_mask.png``,
``thumbnail.png`` (mask overlay + kept tiles) and ``coords.csv``. Every file is written atomically
and ``coords.csv`` last, so its presence marks the slide as finished (re-runs skip it). A slide is
claimed with the lock file ``out_dir/.<name>.lock`` while it is tiled, so several processes can
share one output folder: each slide is tiled by one of them (locks of dead processes are taken over).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from gcmae.io.atomic import atomic_path, write_bytes_atomic
from gcmae.io.paths import claim, lock_owner, safe_name, unique_names
from gcmae.slide.reader import SlideReader, SlideReadError, open_slide
from gcmae.slide.tissue import DEFAULT_MASK_SIZE, TissueMask, slide_tissue_mask

logger = logging.getLogger(__name__)

SLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu",
     ".png", ".jpg", ".jpeg"}
)
COORDS_COLUMNS = ("x", "y", "level", "read_size", "tile_size", "mpp", "tissue_fraction")
_PNG_COMPRESS_LEVEL = 3  # lossless either way; lower = faster writes, larger files


class MissingMPPError(ValueError):
    """A target MPP was requested for a slide without MPP metadata."""


@dataclass(frozen=True)
class TileGrid:
    """Grid geometry: tile ``(row, col)`` starts at level-0 ``(col*step, row*step)`` and is
    read as ``read_size`` x ``read_size`` px at ``level``, then resized to ``tile_size``."""

    level: int
    read_size: int
    step: int  # level-0 px per tile side (and between tile origins)
    n_cols: int
    n_rows: int
    tile_size: int
    mpp: float | None  # µm per output-tile pixel (target mpp, or slide mpp at native res)


class TileRecord(NamedTuple):
    x: int
    y: int
    tissue_fraction: float


@dataclass
class SlideTilingResult:
    slide: Path
    out_dir: Path  # out_dir/<slide_stem>
    skipped: bool  # True when coords.csv already existed (nothing was done)
    tiles: list[TileRecord] = field(default_factory=list)
    grid: TileGrid | None = None
    tissue: TissueMask | None = None
    busy: bool = False  # skipped because another live process holds the slide's lock
    warning: str | None = None  # e.g. no tissue found (0 tiles): finished, but worth a look

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


@dataclass
class TilingSummary:
    slides_done: int = 0
    slides_skipped: int = 0  # already finished (coords.csv present)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    tiles_written: int = 0
    slides_busy: int = 0  # being tiled by another process
    warnings: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.slides_done} slide(s) tiled, {self.slides_skipped} already done, "
                f"{self.slides_busy} in progress elsewhere, {len(self.failures)} failed, "
                f"{len(self.warnings)} with warnings; {self.tiles_written} tiles written")


def plan_grid(reader: SlideReader, tile_size: int, mpp: float | None = None,
              slide_mpp: float | None = None) -> TileGrid:
    """Grid geometry for ``reader``. With ``mpp``: read from the best pyramid level for the
    downsample ``mpp / slide_mpp`` (``slide_mpp`` defaults to the slide metadata) and resize
    to ``tile_size``; without: native level-0 tiles. Raises :class:`MissingMPPError`."""
    width, height = reader.dimensions
    base_mpp = slide_mpp if slide_mpp is not None else reader.mpp
    if mpp is None:
        level, read_size, step, out_mpp = 0, tile_size, tile_size, base_mpp
    else:
        if base_mpp is None:
            raise MissingMPPError(
                f"slide {reader.path.name} has no MPP metadata (openslide.mpp-x), so it cannot be "
                f"tiled at {mpp} µm/px: pass the slide's own MPP (slide_mpp / --slide-mpp) or "
                f"omit --mpp to tile at native resolution")
        target_ds = mpp / base_mpp
        level = reader.get_best_level_for_downsample(target_ds)
        level_ds = reader.level_downsamples[level]
        read_size = max(1, round(tile_size * target_ds / level_ds))
        step = max(1, round(read_size * level_ds))
        out_mpp = mpp
        if read_size < tile_size:
            logger.warning("%s: target %.3g µm/px is finer than the slide (%.3g µm/px); tiles are "
                           "upsampled", reader.path.name, mpp, base_mpp)
    return TileGrid(level=level, read_size=read_size, step=step, n_cols=width // step,
                    n_rows=height // step, tile_size=tile_size, mpp=out_mpp)


def tissue_fractions(tissue: TissueMask, grid: TileGrid) -> np.ndarray:
    """``(n_rows, n_cols)`` tissue fraction per grid cell: the mean of the mask pixels whose
    centre (in level-0 coordinates) falls inside the cell; a cell containing no pixel centre
    takes the mask value at the cell centre."""
    mask = tissue.mask
    dx, dy = tissue.downsample
    col_edges = np.arange(grid.n_cols + 1) * grid.step
    row_edges = np.arange(grid.n_rows + 1) * grid.step
    col_cell = np.searchsorted(col_edges, (np.arange(mask.shape[1]) + 0.5) * dx, side="right") - 1
    row_cell = np.searchsorted(row_edges, (np.arange(mask.shape[0]) + 0.5) * dy, side="right") - 1
    col_ok = (col_cell >= 0) & (col_cell < grid.n_cols)
    row_ok = (row_cell >= 0) & (row_cell < grid.n_rows)
    cell = (row_cell[row_ok][:, None] * grid.n_cols + col_cell[col_ok][None, :]).ravel()
    n_cells = grid.n_rows * grid.n_cols
    sums = np.bincount(cell, weights=mask[np.ix_(row_ok, col_ok)].ravel(), minlength=n_cells)
    counts = np.bincount(cell, minlength=n_cells)
    fractions = np.divide(sums, counts, out=np.zeros(n_cells), where=counts > 0).reshape(grid.n_rows, grid.n_cols)
    r, c = np.nonzero(counts.reshape(grid.n_rows, grid.n_cols) == 0)  # cells smaller than a mask pixel
    cy = np.minimum(((r + 0.5) * grid.step / dy).astype(int), mask.shape[0] - 1)
    cx = np.minimum(((c + 0.5) * grid.step / dx).astype(int), mask.shape[1] - 1)
    fractions[r, c] = mask[cy, cx]
    return fractions


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


def _overlay(tissue: TissueMask, grid: TileGrid, tiles: list[TileRecord]) -> Image.Image:
    """Thumbnail with the tissue mask tinted green and kept tiles outlined in blue."""
    rgb = np.asarray(tissue.thumbnail.convert("RGB"), dtype=np.float32)
    rgb[tissue.mask] = 0.65 * rgb[tissue.mask] + 0.35 * np.array([0.0, 200.0, 0.0])
    image = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    dx, dy = tissue.downsample
    for t in tiles:
        draw.rectangle((t.x / dx, t.y / dy, (t.x + grid.step) / dx - 1, (t.y + grid.step) / dy - 1),
                       outline=(0, 0, 255))
    return image


def _coords_csv(grid: TileGrid, tiles: list[TileRecord]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COORDS_COLUMNS)
    mpp = "" if grid.mpp is None else f"{grid.mpp:g}"
    for t in tiles:
        writer.writerow([t.x, t.y, grid.level, grid.read_size, grid.tile_size, mpp, f"{t.tissue_fraction:.6f}"])
    return buf.getvalue().encode()


def tile_slide(path: str | Path, out_dir: str | Path, tile_size: int = 224, mpp: float | None = None,
               min_tissue: float = 0.5, *, slide_mpp: float | None = None, name: str | None = None,
               mask_size: int = DEFAULT_MASK_SIZE, overwrite: bool = False,
               progress: bool = True) -> SlideTilingResult:
    """Tile one slide into ``out_dir/<safe_name(name or slide stem)>/`` (see module doc).

    Keeps grid cells whose :func:`tissue_fractions` value is ``>= min_tissue``. Skips the
    slide (``skipped=True``) if its ``coords.csv`` exists, unless ``overwrite``, and
    (``busy=True``) while another live process holds its lock. ``slide_mpp`` overrides the
    slide's MPP metadata. Raises FileNotFoundError, :class:`SlideReadError` or
    :class:`MissingMPPError` before writing anything; a read error mid-way removes the
    slide's partial output, so nothing half-done looks like a result.
    """
    path, out_dir = Path(path), Path(out_dir)
    if tile_size < 1 or not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"need tile_size >= 1 and 0 <= min_tissue <= 1, got {tile_size}, {min_tissue}")
    if (mpp is not None and mpp <= 0) or (slide_mpp is not None and slide_mpp <= 0):
        raise ValueError(f"mpp and slide_mpp must be positive, got {mpp}, {slide_mpp}")
    slide_dir = out_dir / safe_name(name or path.stem)
    coords_path = slide_dir / "coords.csv"
    if coords_path.exists() and not overwrite:
        logger.info("%s: already tiled (%s exists), skipping", path.name, coords_path)
        return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / f".{slide_dir.name}.lock"
    with claim(lock) as mine:
        if not mine:
            logger.warning("%s: being tiled by %s (lock %s), skipping", path.name, lock_owner(lock), lock)
            return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True, busy=True)
        if coords_path.exists() and not overwrite:  # finished by another process in the meantime
            return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True)
        return _tile_claimed(path, slide_dir, tile_size, mpp, min_tissue, slide_mpp, mask_size, progress)


def _tile_claimed(path: Path, slide_dir: Path, tile_size: int, mpp: float | None, min_tissue: float,
                  slide_mpp: float | None, mask_size: int, progress: bool) -> SlideTilingResult:
    coords_path, tiles_dir = slide_dir / "coords.csv", slide_dir / "tiles"
    with open_slide(path) as reader:
        grid = plan_grid(reader, tile_size, mpp, slide_mpp)
        tissue = slide_tissue_mask(reader, max_size=mask_size)
        fractions = tissue_fractions(tissue, grid)
        rows, cols = np.nonzero(fractions >= min_tissue)  # row-major order: by y, then x
        tiles = [TileRecord(int(c) * grid.step, int(r) * grid.step, float(fractions[r, c]))
                 for r, c in zip(rows, cols)]
        coords_path.unlink(missing_ok=True)
        tiles_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*tiles_dir.glob("x*_y*.png"), *tiles_dir.glob(".*.tmp")]:
            stale.unlink()  # leftovers of an interrupted run
        size = (grid.read_size, grid.read_size)
        try:
            for t in tqdm(tiles, desc=path.name, unit="tile", leave=False, disable=not progress):
                tile = reader.read_region((t.x, t.y), grid.level, size)
                if grid.read_size != tile_size:
                    tile = tile.resize((tile_size, tile_size), Image.Resampling.LANCZOS)
                _save_png(tile, tiles_dir / f"x{t.x}_y{t.y}.png")
        except Exception:
            shutil.rmtree(slide_dir, ignore_errors=True)  # never leave a partial slide behind
            raise
    warning = None
    if not tiles:
        warning = "no tissue detected: 0 tiles" if not tissue.mask.any() else \
            f"no grid cell has >= {min_tissue:g} tissue: 0 tiles"
        logger.warning("%s: %s", path.name, warning)
    _save_png(Image.fromarray(tissue.mask.astype(np.uint8) * 255), slide_dir / "tissue_mask.png")
    _save_png(_overlay(tissue, grid, tiles), slide_dir / "thumbnail.png")
    write_bytes_atomic(coords_path, _coords_csv(grid, tiles))  # last: marks done
    logger.info("%s: kept %d of %d tiles (level %d, %d px read -> %d px, level-0 step %d)", path.name,
                len(tiles), grid.n_rows * grid.n_cols, grid.level, grid.read_size, tile_size, grid.step)
    return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=False, tiles=tiles, grid=grid, tissue=tissue,
                             warning=warning)


def find_slides(folder: str | Path) -> list[Path]:
    """Slide-like files (by extension, case-insensitive) directly inside ``folder``, sorted;
    hidden files are ignored."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_EXTENSIONS)


def tile_slides(inputs: str | Path, out_dir: str | Path, tile_size: int = 224, mpp: float | None = None,
                min_tissue: float = 0.5, *, slide_mpp: float | None = None,
                mask_size: int = DEFAULT_MASK_SIZE, overwrite: bool = False,
                progress: bool = True) -> TilingSummary:
    """Tile a slide file or every slide in a folder (see :func:`tile_slide` for the options).

    Folder: unreadable slides (and slides lacking MPP when ``mpp`` is set) are reported,
    listed in ``out_dir/failures.csv`` (path, reason) and skipped. Single file: such errors
    are raised. Raises FileNotFoundError for a missing input or a folder without slides.
    """
    inputs, out_dir = Path(inputs), Path(out_dir)
    folder_mode = inputs.is_dir()
    if folder_mode:
        slides = find_slides(inputs)
        if not slides:
            raise FileNotFoundError(f"no slide files ({', '.join(sorted(SLIDE_EXTENSIONS))}) in {inputs}")
    elif inputs.is_file():
        slides = [inputs]
    else:
        raise FileNotFoundError(f"no such slide file or folder: {inputs}")
    names = unique_names(slides)  # safe folder name per slide; two slides never share one
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, settled = TilingSummary(), []
    bar = tqdm(slides, desc="slides", unit="slide", disable=not progress or len(slides) < 2)
    for slide in bar:
        try:
            result = tile_slide(slide, out_dir, tile_size, mpp, min_tissue, slide_mpp=slide_mpp,
                                name=names[slide], mask_size=mask_size, overwrite=overwrite,
                                progress=progress)
        except (SlideReadError, MissingMPPError) as exc:
            if not folder_mode:
                raise
            logger.warning("skipping %s: %s", slide, exc)
            summary.failures.append((slide, str(exc)))
            continue
        if result.busy:
            summary.slides_busy += 1
            continue
        settled.append(slide)
        if result.skipped:
            summary.slides_skipped += 1
        else:
            summary.slides_done += 1
            summary.tiles_written += result.n_tiles
            if result.warning:
                summary.warnings.append((slide, result.warning))
    if folder_mode:
        _update_failures(out_dir / "failures.csv", settled, summary.failures)
    logger.info("tiling %s -> %s: %s", inputs, out_dir, summary)
    return summary


def _update_failures(path: Path, settled: list[Path], failures: list[tuple[Path, str]]) -> None:
    """Rewrite failures.csv under a lock (other processes may share it): this run's failures plus
    earlier rows, except those of slides this run settled (finished or found done) or that are gone."""
    done = {p.resolve() for p in settled}
    with claim(path.with_name(f".{path.name}.lock"), wait_s=30.0):  # then proceeds even if still held
        with open(path if path.exists() else os.devnull, newline="") as fh:
            rows = {Path(r.get("path") or "").resolve(): (r.get("path") or "", r.get("reason") or "")
                    for r in csv.DictReader(fh)}
        rows = {p: row for p, row in rows.items() if p not in done and p.is_file()}
        rows.update({p.resolve(): (str(p), reason) for p, reason in failures})
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([("path", "reason"), *sorted(rows.values())])
        write_bytes_atomic(path, buf.getvalue().encode())
