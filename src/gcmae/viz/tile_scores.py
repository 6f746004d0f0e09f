"""Tile scores drawn over a slide thumbnail: each tile's square coloured by its score, with a colour bar.

Tiles are painted into an RGBA layer the size of the thumbnail (transparent where there is no tile) and shown
with ``alpha`` over the thumbnail, so background and unscored tissue stay visible as they are.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from PIL import Image  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402


def tile_layer(shape: tuple[int, int], coords: np.ndarray, size: int, scores: np.ndarray,
               downsample: tuple[float, float], cmap: str = "jet", vmin: float = 0.0, vmax: float = 1.0,
               alpha: float = 0.5, offset: int = 0) -> np.ndarray:
    """(H, W, 4) float RGBA layer of a (H, W) thumbnail: the level-0 square [x + offset, x + offset + size) of
    each tile filled with the colour of its score at `alpha`; 0 (transparent) elsewhere."""
    layer = np.zeros((*shape, 4), dtype=np.float32)
    colours = plt.get_cmap(cmap)(Normalize(vmin, vmax, clip=True)(np.asarray(scores, dtype=np.float64)))
    dx, dy = downsample
    for (x, y), colour in zip(np.asarray(coords), colours):
        x0, y0 = int(round((x + offset) / dx)), int(round((y + offset) / dy))
        x1, y1 = int(round((x + offset + size) / dx)), int(round((y + offset + size) / dy))
        layer[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)] = (*colour[:3], alpha)
    return layer


def plot_tile_heatmap(thumbnail: Image.Image, downsample: tuple[float, float], coords: np.ndarray, size: int,
                      scores: np.ndarray, out_png: str | Path, title: str = "", label: str = "score",
                      vmin: float = 0.0, vmax: float = 1.0, cmap: str = "jet", alpha: float = 0.5,
                      offset: int = 0) -> Path:
    """Save the thumbnail with the tiles' scores over it (see `tile_layer`) and a colour bar labelled `label`."""
    rgb = np.asarray(thumbnail.convert("RGB"))
    layer = tile_layer(rgb.shape[:2], coords, size, scores, downsample, cmap, vmin, vmax, alpha, offset)
    h, w = rgb.shape[:2]
    width = 7.0
    fig, ax = plt.subplots(figsize=(width + 1.6, max(2.5, width * h / w)))
    ax.imshow(rgb)
    ax.imshow(layer)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    mappable = plt.cm.ScalarMappable(Normalize(vmin, vmax), cmap=cmap)
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02, label=label)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)
