"""Tile one slide: a regular grid at a target resolution, kept where the tissue mask covers enough of a tile.

Output per slide, under ``out_dir/<name>/`` (``name``: the slide's stem made a safe folder name):
``coords.h5`` (tile coordinates + metadata, see :mod:`gcmae.slide.coords`), ``tissue_mask.png``,
``thumbnail.png`` (mask overlay + kept tiles), ``tissue.geojson`` (tissue outlines in level-0 pixels, for
QuPath) and, with ``export_png``, ``tiles/x{X}_y{Y}.png``. Every file is written atomically and
``coords.h5`` last, so its presence marks the slide as finished (re-runs skip it). A slide is claimed with
the lock file ``out_dir/.<name>.lock`` while it is tiled, so several processes can share one output folder:
each slide is tiled by one of them (locks of dead processes are taken over). Many slides, worker processes,
``failures.csv`` and the job summary: :mod:`gcmae.slide.batch`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.io.paths import claim, lock_owner, safe_name
from gcmae.options import option
from gcmae.slide.coords import COORDS_FILENAME, SlideTiles, TileGrid, write_coords_h5
from gcmae.slide.reader import SlideReader, SlideReadError, open_slide
from gcmae.slide.tissue import DEFAULT_MASK_SIZE, TissueMask, slide_tissue_mask

__all__ = ["MissingMPPError", "MissingMagnificationError", "SlideMetadataError", "SlideReadError",
           "SlideTilingResult", "TileGrid", "TileRecord", "TilingSettings", "plan_grid", "read_tile", "tile_slide",
           "tiling_settings", "tissue_fractions"]

logger = logging.getLogger(__name__)

_PNG_COMPRESS_LEVEL = 3  # lossless either way; lower = faster writes, larger files


@dataclass(frozen=True)
class TilingSettings:
    """Everything that decides what a job's outputs contain (saved as ``tiling_config.yaml``); its fields are the
    flags of ``gcmae tile``."""

    tile_size: int = option(224, help="output tile side in px")
    mpp: float | None = option(None, exclusive="resolution", help="target microns per pixel (default: level 0)")
    magnification: float | None = option(None, exclusive="resolution",
                                         help="target objective magnification, e.g. 20 (needs "
                                              "openslide.objective-power)")
    slide_mpp: float | None = option(None, help="the slide's own level-0 microns per pixel, for slides whose "
                                                "metadata lacks it")
    min_tissue: float = option(0.5, help="minimum tissue fraction of a kept tile")
    overlap: int = option(0, help="px (of the output tile) shared by neighbouring tiles")
    mask_size: int = option(DEFAULT_MASK_SIZE, help="longest side of the thumbnail the tissue mask is made on")
    remove_pen: bool = option(False, help="remove red/green/blue marker ink from the tissue mask")
    export_png: bool = option(False, help="also write every kept tile as tiles/x{X}_y{Y}.png")

    def check(self) -> None:
        """ValueError for values no slide can be tiled with."""
        if self.tile_size < 1 or not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"need tile_size >= 1 and 0 <= min_tissue <= 1, got {self.tile_size}, {self.min_tissue}")
        for label, value in (("mpp", self.mpp), ("slide_mpp", self.slide_mpp), ("magnification", self.magnification)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number, got {value}")


def tiling_settings(settings: TilingSettings | None = None, **fields: Any) -> TilingSettings:
    """``settings`` (default: the defaults) with ``fields`` replaced: the keyword shorthand of the Python API."""
    return replace(settings or TilingSettings(), **fields) if fields else settings or TilingSettings()


class SlideMetadataError(ValueError):
    """The slide lacks the metadata a requested resolution needs."""


class MissingMPPError(SlideMetadataError):
    """A target MPP was requested for a slide without MPP metadata."""


class MissingMagnificationError(SlideMetadataError):
    """A target magnification was requested for a slide without objective-power metadata."""


class TileRecord(NamedTuple):
    x: int
    y: int
    tissue_fraction: float


@dataclass
class SlideTilingResult:
    slide: Path
    out_dir: Path  # out_dir/<name>
    skipped: bool  # True when coords.h5 already existed (nothing was done)
    tiles: list[TileRecord] = field(default_factory=list)
    grid: TileGrid | None = None
    tissue: TissueMask | None = None
    busy: bool = False  # skipped because another live process holds the slide's lock
    warning: str | None = None  # e.g. no tissue found (0 tiles): finished, but worth a look

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def plan_grid(reader: SlideReader, tile_size: int, mpp: float | None = None, slide_mpp: float | None = None,
              *, magnification: float | None = None, overlap: int = 0, level: int | None = None) -> TileGrid:
    """Grid geometry for ``reader``.

    The target downsample of level 0 is ``mpp / slide_mpp`` with ``mpp`` (``slide_mpp`` defaults to the
    metadata), ``objective_power / magnification`` with ``magnification``, else 1 (native level 0). Tiles are
    read from the coarsest level that needs no upsampling (or ``level``), ``read_size`` px, then resized to
    ``tile_size``. ``overlap`` (output px shared by neighbouring tiles) sets ``step = extent - overlap_level0``.
    Only tiles lying entirely inside the slide are on the grid. Raises :class:`MissingMPPError` /
    :class:`MissingMagnificationError` when the metadata needed is absent.
    """
    if mpp is not None and magnification is not None:
        raise ValueError("give either a target mpp or a magnification, not both")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
    width, height = reader.dimensions
    base_mpp = slide_mpp if slide_mpp is not None else reader.mpp
    name = reader.path.name
    if magnification is not None:
        power = reader.objective_power
        if power is None:
            raise MissingMagnificationError(
                f"slide {name} has no objective-power metadata (openslide.objective-power), so it cannot be "
                f"tiled at {magnification:g}x: use --mpp instead (with --slide-mpp if it has no MPP either)")
        target_ds = power / magnification
        out_mpp = None if base_mpp is None else base_mpp * target_ds
    elif mpp is not None:
        if base_mpp is None:
            raise MissingMPPError(
                f"slide {name} has no MPP metadata (openslide.mpp-x), so it cannot be "
                f"tiled at {mpp} µm/px: pass the slide's own MPP (slide_mpp / --slide-mpp) or "
                f"omit --mpp to tile at native resolution")
        target_ds, out_mpp = mpp / base_mpp, mpp
    else:
        target_ds, out_mpp = 1.0, base_mpp
    if level is None:
        level = reader.get_best_level_for_downsample(target_ds)
    elif not 0 <= level < reader.level_count:
        raise ValueError(f"{name} has {reader.level_count} level(s); got level={level}")
    level_ds = reader.level_downsamples[level]
    read_size = max(1, round(tile_size * target_ds / level_ds))
    extent = max(1, round(read_size * level_ds))
    step = max(1, extent - round(overlap * extent / tile_size))
    if read_size < tile_size:
        logger.warning("%s: target downsample %.3g is finer than level %d; tiles are upsampled",
                       name, target_ds, level)

    def count(length: int) -> int:
        return (length - extent) // step + 1 if length >= extent else 0

    return TileGrid(level=level, read_size=read_size, step=step, extent=extent, n_cols=count(width),
                    n_rows=count(height), tile_size=tile_size, mpp=out_mpp)


def _cell_ranges(n_cells: int, step: int, extent: int, n_pixels: int, scale: float) -> tuple[np.ndarray, ...]:
    """Per cell, the half-open range of mask pixels whose centre ``(j + 0.5) * scale`` (level 0) lies in
    ``[i*step, i*step + extent)``."""
    centres = (np.arange(n_pixels) + 0.5) * scale
    start = np.arange(n_cells) * step
    return np.searchsorted(centres, start, side="left"), np.searchsorted(centres, start + extent, side="left")


def tissue_fractions(tissue: TissueMask, grid: TileGrid) -> np.ndarray:
    """``(n_rows, n_cols)`` tissue fraction per tile: the mean of the mask pixels whose centre (in level-0
    coordinates) falls inside the tile; a tile containing no pixel centre takes the mask value at its centre."""
    mask = tissue.mask
    dx, dy = tissue.downsample
    c0, c1 = _cell_ranges(grid.n_cols, grid.step, grid.extent, mask.shape[1], dx)
    r0, r1 = _cell_ranges(grid.n_rows, grid.step, grid.extent, mask.shape[0], dy)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)  # summed-area table
    table[1:, 1:] = mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    sums = table[np.ix_(r1, c1)] - table[np.ix_(r0, c1)] - table[np.ix_(r1, c0)] + table[np.ix_(r0, c0)]
    counts = np.outer(r1 - r0, c1 - c0)
    fractions = np.divide(sums, counts, out=np.zeros(sums.shape), where=counts > 0)
    r, c = np.nonzero(counts == 0)  # tiles smaller than a mask pixel
    cy = np.minimum(((r * grid.step + 0.5 * grid.extent) / dy).astype(int), mask.shape[0] - 1)
    cx = np.minimum(((c * grid.step + 0.5 * grid.extent) / dx).astype(int), mask.shape[1] - 1)
    fractions[r, c] = mask[cy, cx]
    return fractions


def read_tile(reader: SlideReader, grid: TileGrid, x: int, y: int) -> Image.Image:
    """The ``tile_size`` px RGB tile whose top-left corner is level-0 ``(x, y)``: ``read_size`` px read at
    ``grid.level``, resized with Lanczos (antialiased) when the sizes differ."""
    tile = reader.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size))
    if grid.read_size != grid.tile_size:
        tile = tile.resize((grid.tile_size, grid.tile_size), Image.Resampling.LANCZOS)
    return tile


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


def _overlay(tissue: TissueMask, grid: TileGrid, tiles: list[TileRecord]) -> Image.Image:
    """Thumbnail with the tissue mask tinted green and kept tiles outlined in blue."""
    rgb = np.asarray(tissue.thumbnail.convert("RGB"), dtype=np.float32).copy()
    rgb[tissue.mask] = 0.65 * rgb[tissue.mask] + 0.35 * np.array([0.0, 200.0, 0.0])
    image = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    dx, dy = tissue.downsample
    for t in tiles:
        draw.rectangle((t.x / dx, t.y / dy, (t.x + grid.extent) / dx - 1, (t.y + grid.extent) / dy - 1),
                       outline=(0, 0, 255))
    return image


MPP_TOLERANCE = 0.01  # relative: a --slide-mpp within 1 % of the metadata is the same value, rounded


def mpp_override_warning(given: float | None, metadata: float | None) -> str | None:
    """The warning when a user-given slide MPP overrides different MPP metadata (None when it does not)."""
    if given is None or metadata is None or abs(given - metadata) <= MPP_TOLERANCE * metadata:
        return None
    return (f"--slide-mpp {given:g} overrides the slide's own MPP metadata {metadata:g} µm/px (physical sizes are "
            f"scaled by {given / metadata:.3g}); recorded as slide_mpp_source / metadata_mpp in coords.h5")


def tile_slide(path: str | Path, out_dir: str | Path, settings: TilingSettings | None = None, *,
               name: str | None = None, overwrite: bool = False, progress: bool = True,
               **fields: Any) -> SlideTilingResult:
    """Tile one slide into ``out_dir/<safe_name(name or slide stem)>/`` (see module doc) with ``settings``
    (``fields``: :class:`TilingSettings` fields to replace, e.g. ``tile_size=256``).

    Keeps the grid tiles (:func:`plan_grid`) whose :func:`tissue_fractions` value is ``>= min_tissue``.
    Skips the slide (``skipped=True``) if its ``coords.h5`` exists, unless ``overwrite``, and (``busy=True``)
    while another live process holds its lock. ``slide_mpp`` overrides the slide's MPP metadata;
    ``remove_pen`` drops marker-pen ink from the tissue mask. Raises FileNotFoundError,
    :class:`SlideReadError` or :class:`SlideMetadataError` before writing anything; a read error mid-way
    removes the slide's partial output, so nothing half-done looks like a result.
    """
    path, out_dir = Path(path), Path(out_dir)
    settings = tiling_settings(settings, **fields)
    settings.check()
    slide_dir = out_dir / safe_name(name or path.stem)
    coords_path = slide_dir / COORDS_FILENAME
    lock = out_dir / f".{slide_dir.name}.lock"
    if coords_path.exists() and not overwrite:
        logger.info("%s: already tiled (%s exists), skipping", path.name, coords_path)
        if lock.exists():  # left by a process killed between finishing and unlocking: taken over, then removed
            with claim(lock):
                pass
        return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with claim(lock) as mine:
        if not mine:
            logger.warning("%s: being tiled by %s (lock %s), skipping", path.name, lock_owner(lock), lock)
            return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True, busy=True)
        if coords_path.exists() and not overwrite:  # finished by another process in the meantime
            return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=True)
        return _tile_claimed(path, slide_dir, settings, progress)


def _tile_claimed(path: Path, slide_dir: Path, settings: TilingSettings, progress: bool) -> SlideTilingResult:
    coords_path, tiles_dir = slide_dir / COORDS_FILENAME, slide_dir / "tiles"
    min_tissue = settings.min_tissue
    with open_slide(path) as reader:
        grid = plan_grid(reader, settings.tile_size, settings.mpp, settings.slide_mpp,
                         magnification=settings.magnification, overlap=settings.overlap)
        tissue = slide_tissue_mask(reader, max_size=settings.mask_size, remove_pen=settings.remove_pen)
        fractions = tissue_fractions(tissue, grid)
        rows, cols = np.nonzero(fractions >= min_tissue)  # row-major order: by y, then x
        tiles = [TileRecord(int(c) * grid.step, int(r) * grid.step, float(fractions[r, c]))
                 for r, c in zip(rows, cols)]
        coords_path.unlink(missing_ok=True)
        if tiles_dir.exists():
            shutil.rmtree(tiles_dir)  # leftovers of an interrupted or earlier run
        for stale in slide_dir.glob(".*.tmp"):
            stale.unlink()
        if settings.export_png:
            tiles_dir.mkdir(parents=True)
            try:
                for t in tqdm(tiles, desc=path.name, unit="tile", leave=False, disable=not progress):
                    _save_png(read_tile(reader, grid, t.x, t.y), tiles_dir / f"x{t.x}_y{t.y}.png")
            except Exception:
                shutil.rmtree(slide_dir, ignore_errors=True)  # never leave a partial slide behind
                raise
        dimensions, slide_mpp = reader.dimensions, settings.slide_mpp or reader.mpp
        metadata_mpp = reader.mpp
    warnings = []
    override = mpp_override_warning(settings.slide_mpp, metadata_mpp)
    if override:
        warnings.append(override)
    if not tiles:
        warnings.append("no tissue detected: 0 tiles" if not tissue.mask.any() else
                        f"no grid cell has >= {min_tissue:g} tissue: 0 tiles")
    for w in warnings:
        logger.warning("%s: %s", path.name, w)
    warning = "; ".join(warnings) or None
    _save_png(Image.fromarray(tissue.mask.astype(np.uint8) * 255), slide_dir / "tissue_mask.png")
    _save_png(_overlay(tissue, grid, tiles), slide_dir / "thumbnail.png")
    write_text_atomic(slide_dir / "tissue.geojson", json.dumps(tissue.to_geojson()))
    coords = np.array([(t.x, t.y) for t in tiles], dtype=np.int64).reshape(-1, 2)
    attrs = {"min_tissue": min_tissue, "overlap": settings.overlap,
             "magnification": settings.magnification,  # None is stored as NaN by write_coords_h5
             "mask_size": settings.mask_size, "remove_pen": bool(settings.remove_pen),
             "tissue_threshold": tissue.threshold,
             # where slide_mpp comes from: the slide's metadata, or --slide-mpp (then what the metadata said)
             "slide_mpp_source": "metadata" if settings.slide_mpp is None else "--slide-mpp",
             "metadata_mpp": metadata_mpp}  # None (no metadata) is stored as NaN
    write_coords_h5(coords_path, SlideTiles(  # last: marks the slide as finished
        slide_path=path.resolve(), name=slide_dir.name, grid=grid, coords=coords,
        tissue_fraction=np.array([t.tissue_fraction for t in tiles], dtype=np.float32),
        slide_mpp=slide_mpp, dimensions=dimensions, attrs=attrs))
    logger.info("%s: kept %d of %d tiles (level %d, %d px read -> %d px, level-0 extent %d, step %d)", path.name,
                len(tiles), grid.n_rows * grid.n_cols, grid.level, grid.read_size, grid.tile_size, grid.extent,
                grid.step)
    return SlideTilingResult(slide=path, out_dir=slide_dir, skipped=False, tiles=tiles, grid=grid, tissue=tissue,
                             warning=warning)

