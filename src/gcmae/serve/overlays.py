"""Per-tile score layers drawn for the viewer (heatmap, attention) as small RGBA PNGs with one block of pixels per
grid cell, placed by the page over the slide in level-0 coordinates.

A tile at level-0 ``(x, y)`` is grid cell ``(x // step, y // step)``; with overlap, each tile paints its own
``step``-sized cell centred in its extent, as the PNG heatmaps of `gcmae heatmap` do. The image covers level-0
``[offset, offset + n_cols * step) x [offset, offset + n_rows * step)``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from gcmae.slide.coords import SlideTiles

COLORMAPS = {"heatmap": "jet", "attention": "inferno"}  # jet as in the PNGs of gcmae heatmap
MAX_SIDE = 4096  # px of the longest side of a layer image


class OverlayError(ValueError):
    """A score file that cannot be read or does not fit the slide's grid."""


@dataclass(frozen=True)
class Scores:
    coords: np.ndarray  # (N, 2) level-0 x, y
    values: np.ndarray  # (N,) scaled to [0, 1] for drawing
    raw: np.ndarray  # (N,) as stored
    label: str  # what the colour bar shows


def read_scores(path: Path, column: str, kind: str) -> Scores:
    """x, y and `column` of a score CSV (`gcmae heatmap`, `mil predict`, `diagnose`); attention is drawn relative
    to the most attended tile, probabilities as they are."""
    try:
        with open(path, newline="") as fh:
            rows = [(int(r["x"]), int(r["y"]), float(r[column])) for r in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as err:
        raise OverlayError(f"{path.name}: not a score file with x, y, {column} ({err})") from err
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    raw = arr[:, 2]
    if kind == "attention":
        top = raw.max() if raw.size else 0.0
        values, label = (raw / top if top > 0 else raw), "attention / max attention"
    else:
        values, label = np.clip(raw, 0.0, 1.0), "probability"
    return Scores(arr[:, :2].astype(np.int64), values, raw, label)


def layout(tiles: SlideTiles) -> dict[str, Any]:
    """Where a layer image of `tiles`'s grid lies on the slide (level-0 px) and its pixels per cell."""
    g = tiles.grid
    cell = max(1, min(16, MAX_SIDE // max(g.n_cols, g.n_rows, 1)))
    offset = (g.extent - g.step) // 2
    return {"x": offset, "y": offset, "width": g.n_cols * g.step, "height": g.n_rows * g.step, "cell_px": cell}


def _cells(tiles: SlideTiles, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = tiles.grid
    cols, rows = coords[:, 0] // g.step, coords[:, 1] // g.step
    if coords.size and (cols.min() < 0 or rows.min() < 0 or cols.max() >= g.n_cols or rows.max() >= g.n_rows):
        raise OverlayError("tile coordinates outside the slide's tile grid (scores of another tiling?)")
    return rows, cols


def _png(cells: np.ndarray, cell_px: int) -> bytes:
    """(rows, cols, 4) uint8 cells upsampled by `cell_px` to a PNG."""
    big = np.repeat(np.repeat(cells, cell_px, axis=0), cell_px, axis=1)
    buf = io.BytesIO()
    Image.fromarray(big, "RGBA").save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def score_png(tiles: SlideTiles, scores: Scores, kind: str) -> bytes:
    """The scores as colours of `COLORMAPS[kind]`, opaque on scored cells, transparent elsewhere."""
    g = tiles.grid
    rows, cols = _cells(tiles, scores.coords)
    cells = np.zeros((g.n_rows, g.n_cols, 4), dtype=np.uint8)
    colours = matplotlib.colormaps[COLORMAPS[kind]](scores.values)
    cells[rows, cols] = np.round(colours * 255).astype(np.uint8)
    return _png(cells, layout(tiles)["cell_px"])


def colour_stops(kind: str, n: int = 11) -> list[str]:
    """`n` evenly spaced colours of the layer's colour map, as CSS hex, for the page's colour bar."""
    cmap = matplotlib.colormaps[COLORMAPS[kind]]
    return [matplotlib.colors.to_hex(cmap(i / (n - 1))) for i in range(n)]


def top_tiles(tiles: SlideTiles, scores: Scores, k: int = 10) -> list[dict[str, Any]]:
    """The `k` highest-scoring tiles: level-0 x, y, side and score, highest first."""
    order = np.argsort(-scores.raw, kind="stable")[:k]
    return [{"x": int(scores.coords[i, 0]), "y": int(scores.coords[i, 1]), "size": tiles.grid.extent,
             "score": float(scores.raw[i]), "relative": float(scores.values[i])} for i in order]
