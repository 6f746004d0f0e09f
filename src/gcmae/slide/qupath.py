"""Per-tile scores as GeoJSON that QuPath opens (File > Import objects, or drag and drop onto the slide).

One square Polygon per tile in level-0 pixel coordinates, ``objectType: tile`` (QuPath's tile objects, so
Measure > Show measurement maps colours them), the scores under ``measurements`` (QuPath 0.4+'s layout) and a
``classification`` when a class is given per tile.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gcmae.io.atomic import write_text_atomic


def _number(value: float) -> float | None:
    """6 significant digits, as the CSV beside it; None (JSON null) for NaN or infinity, which JSON cannot hold."""
    v = float(value)
    return float(f"{v:.6g}") if np.isfinite(v) else None


def tile_scores_geojson(coords: np.ndarray, extent: int, scores: dict[str, np.ndarray],
                        classes: Sequence[str] | None = None) -> dict[str, Any]:
    """A FeatureCollection: tile i is the square [x, x + extent] x [y, y + extent] with its scores as measurements."""
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2), got {coords.shape}")
    for name, values in scores.items():
        if len(values) != len(coords):
            raise ValueError(f"{len(values)} {name!r} scores for {len(coords)} tiles")
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        ring = [[x, y], [x + extent, y], [x + extent, y + extent], [x, y + extent], [x, y]]
        properties: dict[str, Any] = {"objectType": "tile",
                                      "measurements": {k: _number(v[i]) for k, v in scores.items()}}
        if classes is not None:
            properties["classification"] = {"name": classes[i]}
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_tile_scores_geojson(path: Path, coords: np.ndarray, extent: int, scores: dict[str, np.ndarray],
                              classes: Sequence[str] | None = None) -> Path:
    """Write `tile_scores_geojson` to `path` atomically."""
    doc = tile_scores_geojson(coords, extent, scores, classes)
    return write_text_atomic(path, json.dumps(doc, allow_nan=False) + "\n")
