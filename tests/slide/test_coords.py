"""coords.h5: round trip, the on-disk layout read back with plain h5py, empty slides, and bad files."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from gcmae.slide.coords import (
    COORDS_FILENAME,
    CoordsFileError,
    SlideTiles,
    TileGrid,
    read_coords_h5,
    write_coords_h5,
)

GRID = TileGrid(level=1, read_size=224, step=400, extent=448, n_cols=9, n_rows=7, tile_size=224, mpp=0.5)


def _tiles(n: int, *, mpp: float | None = 0.25, attrs: dict | None = None) -> SlideTiles:
    rng = np.random.default_rng(n)
    coords = rng.integers(0, 3000, size=(n, 2)) // 400 * 400
    return SlideTiles(slide_path=Path("/data/slides/case 1.svs"), name="case 1", grid=GRID, coords=coords,
                      tissue_fraction=rng.random(n).astype(np.float32), slide_mpp=mpp, dimensions=(4000, 3000),
                      attrs={"min_tissue": 0.5, "overlap": 24, **(attrs or {})})


def test_round_trip(tmp_path: Path) -> None:
    tiles = _tiles(37, attrs={"remove_pen": True, "settings": {"mask_size": 2048, "levels": [1, 2]}})
    path = tmp_path / COORDS_FILENAME
    write_coords_h5(path, tiles)
    back = read_coords_h5(path)
    assert back.grid == GRID and back.grid.overlap == 48
    assert back.slide_path == tiles.slide_path and back.name == "case 1"
    np.testing.assert_array_equal(back.coords, tiles.coords)
    assert back.coords.dtype == np.int64 and back.tissue_fraction.dtype == np.float32
    np.testing.assert_array_equal(back.tissue_fraction, tiles.tissue_fraction)
    assert back.slide_mpp == 0.25 and back.dimensions == (4000, 3000) and len(back) == 37
    assert back.attrs["min_tissue"] == 0.5 and back.attrs["overlap"] == 24 and back.attrs["remove_pen"] is True
    assert back.attrs["settings"] == {"mask_size": 2048, "levels": [1, 2]}
    assert back.attrs["gcmae_version"] and back.attrs["created"].startswith("20")
    assert not list(tmp_path.glob(".*.tmp"))


def test_layout_with_plain_h5py(tmp_path: Path) -> None:
    """The layout other tools rely on, read without gcmae."""
    tiles = _tiles(5, mpp=None)
    path = tmp_path / COORDS_FILENAME
    write_coords_h5(path, tiles)
    with h5py.File(path, "r") as h5:
        assert set(h5.keys()) == {"coords", "tissue_fraction"}
        assert h5["coords"].shape == (5, 2) and h5["coords"].dtype == np.int64
        assert h5["tissue_fraction"].shape == (5,) and h5["tissue_fraction"].dtype == np.float32
        a = dict(h5.attrs)
    for key in ("slide_path", "name", "level", "read_size", "step", "extent", "n_cols", "n_rows", "tile_size",
                "mpp", "slide_mpp", "width", "height", "min_tissue", "overlap", "gcmae_version", "created"):
        assert key in a, key
    assert a["slide_path"] == "/data/slides/case 1.svs" and a["name"] == "case 1"
    assert (a["level"], a["read_size"], a["step"], a["extent"], a["n_cols"], a["n_rows"], a["tile_size"]) == \
        (1, 224, 400, 448, 9, 7, 224)
    assert a["mpp"] == 0.5 and math.isnan(a["slide_mpp"]) and (a["width"], a["height"]) == (4000, 3000)
    assert read_coords_h5(path).slide_mpp is None


def test_empty_slide(tmp_path: Path) -> None:
    grid = TileGrid(level=0, read_size=224, step=224, extent=224, n_cols=0, n_rows=0, tile_size=224, mpp=None)
    tiles = SlideTiles(slide_path=tmp_path / "glass.tif", name="glass", grid=grid, coords=np.zeros((0, 2)),
                       tissue_fraction=np.zeros(0), slide_mpp=None, dimensions=(100, 80))
    write_coords_h5(tmp_path / "c.h5", tiles)
    back = read_coords_h5(tmp_path / "c.h5")
    assert back.coords.shape == (0, 2) and back.coords.dtype == np.int64 and back.tissue_fraction.shape == (0,)
    assert back.grid.mpp is None and math.isnan(back.attrs["min_tissue"]) and back.attrs["overlap"] == 0


def test_bad_inputs_are_refused_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_coords_h5(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5\n")
    with pytest.raises(CoordsFileError, match=r"text\.h5.*corrupt or not HDF5"):
        read_coords_h5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["coords"] = np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(CoordsFileError, match=r"other\.h5 is not a gcmae coordinates file: missing tissue_fraction"):
        read_coords_h5(tmp_path / "other.h5")
    write_coords_h5(tmp_path / "good.h5", _tiles(4))
    data = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CoordsFileError, match="truncated.h5"):
        read_coords_h5(tmp_path / "truncated.h5")
    with pytest.raises(CoordsFileError, match=r"shape \(N, 2\)"):
        write_coords_h5(tmp_path / "bad.h5", SlideTiles(Path("s.svs"), "s", GRID, np.zeros((3, 3), dtype=int),
                                                        np.zeros(3), None, (1, 1)))
    with pytest.raises(CoordsFileError, match="tissue_fraction must have shape"):
        write_coords_h5(tmp_path / "bad.h5", SlideTiles(Path("s.svs"), "s", GRID, np.zeros((3, 2), dtype=int),
                                                        np.zeros(2), None, (1, 1)))
    assert not (tmp_path / "bad.h5").exists()
