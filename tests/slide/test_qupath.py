"""Tile scores as QuPath GeoJSON: squares in level-0 pixels, scores as measurements."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gcmae.slide.qupath import tile_scores_geojson, write_tile_scores_geojson


def test_each_tile_is_its_square_with_its_scores():
    coords = np.array([[0, 0], [448, 224]])
    doc = tile_scores_geojson(coords, 224, {"prob": np.array([0.25, 0.9]), "attention": np.array([1.0, 2.0])},
                              classes=["normal", "tumour"])
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    second = doc["features"][1]
    assert second["geometry"] == {"type": "Polygon",
                                  "coordinates": [[[448, 224], [672, 224], [672, 448], [448, 448], [448, 224]]]}
    assert second["properties"] == {"objectType": "tile", "measurements": {"prob": 0.9, "attention": 2.0},
                                    "classification": {"name": "tumour"}}


def test_scores_must_match_the_tiles():
    with pytest.raises(ValueError, match="1 'prob' scores for 2 tiles"):
        tile_scores_geojson(np.zeros((2, 2), dtype=int), 16, {"prob": np.array([0.5])})


def test_written_file_is_valid_json(tmp_path):
    path = write_tile_scores_geojson(tmp_path / "s.geojson", np.array([[3, 4]]), 8, {"prob": np.array([0.5])})
    assert json.loads(path.read_text())["features"][0]["properties"]["measurements"] == {"prob": 0.5}


def test_nan_scores_are_written_as_null(tmp_path):
    path = write_tile_scores_geojson(tmp_path / "s.geojson", np.array([[0, 0], [8, 0]]), 8,
                                     {"prob": np.array([np.nan, 0.25])})
    text = path.read_text()
    assert "NaN" not in text
    assert [f["properties"]["measurements"]["prob"] for f in json.loads(text)["features"]] == [None, 0.25]
