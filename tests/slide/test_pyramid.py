"""A multi-level pyramidal TIFF built here from the real CMU pixels: OpenSlide reads it as a 3-level slide with
an MPP, the grid at a target MPP matches a direct recomputation, and a tile at that MPP has the same content
whichever pyramid level it is read from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from gcmae.slide.coords import read_coords_h5
from gcmae.slide.reader import open_slide
from gcmae.slide.tiling import plan_grid, read_tile, tile_slide
from tests.conftest import SAMPLES
from tests.slide.test_tiling import check_against_recomputation

CMU = SAMPLES / "slides" / "cmu-1-small-region.svs"  # 0.499 µm/px
DECLARED_MPP = 0.5  # written into the TIFF so that MPP 2.0 is exactly level 2 (the pixels are 0.499 µm/px)


def write_pyramid_tiff(path: Path, base: np.ndarray, levels: int, mpp: float) -> None:
    """Tiled, zlib-compressed pyramidal TIFF (OpenSlide 'generic-tiff'): levels 2x box-downsampled, each page
    with its resolution in px/cm so that OpenSlide reports ``mpp`` for level 0."""
    image = Image.fromarray(base)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i in range(levels):
            level = image.reduce(2**i) if i else image  # box filter, like a scanner's pyramid
            px_per_cm = 1e4 / (mpp * 2**i)
            tif.write(np.asarray(level), tile=(256, 256), compression="zlib", photometric="rgb",
                      subfiletype=int(i > 0), resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with openslide.OpenSlide(str(CMU)) as slide:
        base = np.asarray(slide.read_region((0, 0), 0, (2048, 2560)).convert("RGB"))
    path = tmp_path_factory.mktemp("pyramid") / "cmu_pyramid.tif"
    write_pyramid_tiff(path, base, levels=3, mpp=DECLARED_MPP)
    return path


def test_openslide_reads_three_levels_and_the_mpp(pyramid: Path) -> None:
    with openslide.OpenSlide(str(pyramid)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((2048, 2560), (1024, 1280), (512, 640))
    with open_slide(pyramid) as reader:
        assert reader.level_downsamples == (1.0, 2.0, 4.0)
        assert reader.mpp == pytest.approx(DECLARED_MPP)
        assert reader.objective_power is None


def test_grid_at_target_mpp_reads_level2_and_matches_recomputation(pyramid: Path, tmp_path: Path) -> None:
    result = tile_slide(pyramid, tmp_path, tile_size=128, mpp=2.0, min_tissue=0.5, mask_size=512, progress=False)
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    assert (tiles.grid.level, tiles.grid.read_size, tiles.grid.extent, tiles.grid.mpp) == (2, 128, 512, 2.0)
    assert tiles.slide_mpp == pytest.approx(DECLARED_MPP)
    check_against_recomputation(result, step=512, min_tissue=0.5)
    assert (tiles.grid.n_cols, tiles.grid.n_rows) == (4, 5)


def test_same_tile_whatever_the_level_it_is_read_from(pyramid: Path) -> None:
    """MPP 2.0 = downsample 4: level 0 read at 512 px and resized, level 1 at 256 px, or level 2 at 128 px."""
    with open_slide(pyramid) as reader:
        grids = [plan_grid(reader, 128, mpp=2.0, level=level) for level in (0, 1, 2)]
        assert [g.read_size for g in grids] == [512, 256, 128] and {g.extent for g in grids} == {512}
        checked = 0
        for y in range(0, 2560 - 512 + 1, 512):
            for x in range(0, 2048 - 512 + 1, 512):
                tiles = [np.asarray(read_tile(reader, g, x, y), dtype=np.float32) for g in grids]
                if (tiles[2].min(axis=2) < 200).mean() < 0.3:  # mostly glass: blank tiles agree, proving nothing
                    continue
                assert all(t.shape == (128, 128, 3) for t in tiles)
                for other in tiles[:2]:
                    assert np.abs(other - tiles[2]).mean() < 8.0  # 8/255
                shifted = np.asarray(read_tile(reader, grids[0], x + 64, y), dtype=np.float32)
                assert np.abs(shifted - tiles[2]).mean() > 2 * np.abs(tiles[0] - tiles[2]).mean() + 4
                checked += 1
    assert checked >= 5
