"""Tiling one slide (``tile_slide``) on the real sample slides.

Expected tiles are recomputed here independently of ``tissue_fractions``: for every grid tile lying inside the
slide, a plain loop takes the mean of the mask pixels whose centre (level-0 coords) lies in the tile, and keeps
the tile when that is >= min_tissue.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image, ImageDraw

from gcmae.slide.batch import tile_slides
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.reader import SlideReadError, open_slide
from gcmae.slide.tiling import (
    MissingMagnificationError,
    MissingMPPError,
    SlideTilingResult,
    tile_slide,
)
from gcmae.slide.tissue import slide_tissue_mask

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "data" / "samples" / "slides"
CMU = SLIDES / "cmu-1-small-region.svs"  # 2220 x 2967, one level, 0.499 µm/px, 20x
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"  # 4443 x 3567, two levels, no MPP


def expected_tiles(mask: np.ndarray, downsample: tuple[float, float], step: int, extent: int, width: int,
                   height: int, min_tissue: float) -> dict[tuple[int, int], float]:
    dx, dy = downsample
    centre_x = (np.arange(mask.shape[1]) + 0.5) * dx
    centre_y = (np.arange(mask.shape[0]) + 0.5) * dy
    kept = {}
    for y in range(0, height - extent + 1, step):
        rows = (centre_y >= y) & (centre_y < y + extent)
        for x in range(0, width - extent + 1, step):
            cols = (centre_x >= x) & (centre_x < x + extent)
            fraction = float(mask[np.ix_(rows, cols)].mean())
            if fraction >= min_tissue:
                kept[(x, y)] = fraction
    return kept


def check_against_recomputation(result: SlideTilingResult, step: int, min_tissue: float,
                                extent: int | None = None) -> None:
    """coords.h5 holds exactly the tiles a direct loop over the stored mask keeps, with their fractions."""
    extent = extent or step
    assert result.tissue is not None and not result.skipped
    with openslide.OpenSlide(str(result.slide)) as slide:
        width, height = slide.dimensions
    stored_mask = np.asarray(_image(result.out_dir / "tissue_mask.png")) > 0
    np.testing.assert_array_equal(stored_mask, result.tissue.mask)
    expected = expected_tiles(stored_mask, result.tissue.downsample, step, extent, width, height, min_tissue)
    n_cells = len(range(0, width - extent + 1, step)) * len(range(0, height - extent + 1, step))
    assert 0 < len(expected) < n_cells  # the threshold matters on this slide
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    got = {(int(x), int(y)): float(f) for (x, y), f in zip(tiles.coords, tiles.tissue_fraction)}
    assert len(got) == len(tiles.coords) == result.n_tiles
    assert set(got) == set(expected)
    for key, fraction in expected.items():
        assert got[key] == pytest.approx(fraction, abs=1e-6)
    assert (tiles.grid.step, tiles.grid.extent, tiles.dimensions) == (step, extent, (width, height))
    assert tiles.grid.n_cols * tiles.grid.n_rows == n_cells


def _image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _region(path: Path, x: int, y: int, size: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def cmu_native(tmp_path_factory: pytest.TempPathFactory) -> SlideTilingResult:
    return tile_slide(CMU, tmp_path_factory.mktemp("native"), tile_size=224, min_tissue=0.5, export_png=True,
                      mask_size=1024, progress=False)


@pytest.fixture(scope="module")
def cmu_mpp1(tmp_path_factory: pytest.TempPathFactory) -> SlideTilingResult:
    return tile_slide(CMU, tmp_path_factory.mktemp("mpp1"), tile_size=224, mpp=1.0, min_tissue=0.5,
                      export_png=True, mask_size=1024, progress=False)


def test_native_grid_matches_recomputation(cmu_native: SlideTilingResult) -> None:
    assert cmu_native.out_dir.name == "cmu-1-small-region"
    check_against_recomputation(cmu_native, step=224, min_tissue=0.5)
    tiles = read_coords_h5(cmu_native.out_dir / "coords.h5")
    assert (tiles.grid.level, tiles.grid.read_size, tiles.grid.tile_size, tiles.grid.mpp) == (0, 224, 224, 0.499)
    assert tiles.slide_mpp == 0.499 and tiles.slide_path == CMU.resolve()


def test_native_tiles_are_exact_level0_crops(cmu_native: SlideTilingResult) -> None:
    for tile in cmu_native.tiles[:: max(1, cmu_native.n_tiles // 5)]:
        image = _image(cmu_native.out_dir / "tiles" / f"x{tile.x}_y{tile.y}.png")
        assert image.size == (224, 224) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), _region(CMU, tile.x, tile.y, 224).astype(np.uint8))
    names = {p.name for p in (cmu_native.out_dir / "tiles").iterdir()}
    assert names == {f"x{t.x}_y{t.y}.png" for t in cmu_native.tiles}


def test_outputs_complete_and_coords_written_last(cmu_native: SlideTilingResult) -> None:
    files = [p for p in cmu_native.out_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files if p.parent == cmu_native.out_dir} == \
        {"coords.h5", "thumbnail.png", "tissue_mask.png", "tissue.geojson"}
    assert not [p for p in files if p.name.endswith(".tmp")]
    thumb = _image(cmu_native.out_dir / "thumbnail.png")
    assert thumb.size == cmu_native.tissue.thumbnail.size  # type: ignore[union-attr]
    coords_mtime = (cmu_native.out_dir / "coords.h5").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= coords_mtime for p in files)


def test_geojson_outlines_the_mask_within_the_slide(cmu_native: SlideTilingResult) -> None:
    doc = json.loads((cmu_native.out_dir / "tissue.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    mask = cmu_native.tissue.mask  # type: ignore[union-attr]
    dx, dy = cmu_native.tissue.downsample  # type: ignore[union-attr]
    raster = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    draw = ImageDraw.Draw(raster)
    for feature in doc["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert feature["properties"] == {"objectType": "annotation", "classification": {"name": "Tissue"}}
        rings = [np.asarray(r, dtype=float) for r in feature["geometry"]["coordinates"]]
        for i, ring in enumerate(rings):
            assert len(ring) >= 4 and (ring[0] == ring[-1]).all()  # closed
            assert (ring >= 0).all() and (ring[:, 0] <= 2220).all() and (ring[:, 1] <= 2967).all()
            area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
            assert (area > 0) == (i == 0)  # exterior counter-clockwise, holes clockwise (RFC 7946)
            # back to mask pixel indices: contours run through pixel centres
            draw.polygon([(x / dx - 0.5, y / dy - 0.5) for x, y in ring], fill=0 if i else 1)
    rasterised = np.asarray(raster) > 0
    iou = (rasterised & mask).sum() / (rasterised | mask).sum()
    assert iou > 0.97, iou


def test_mpp_grid_matches_recomputation(cmu_mpp1: SlideTilingResult) -> None:
    step = round(224 * 1.0 / 0.499)  # level-0 px covering 224 px at 1.0 µm/px
    assert step == 449
    check_against_recomputation(cmu_mpp1, step=step, min_tissue=0.5)
    grid = read_coords_h5(cmu_mpp1.out_dir / "coords.h5").grid
    assert (grid.level, grid.read_size, grid.tile_size, grid.mpp) == (0, 449, 224, 1.0)
    for tile in cmu_mpp1.tiles:
        assert _image(cmu_mpp1.out_dir / "tiles" / f"x{tile.x}_y{tile.y}.png").size == (224, 224)


def _blocks(a: np.ndarray, k: int = 4) -> np.ndarray:
    """k x k block means: compares content while ignoring resampling-filter detail."""
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def _downsampled_region(path: Path, x: int, y: int, size: int, out: int) -> np.ndarray:
    region = Image.fromarray(_region(path, x, y, size).astype(np.uint8))
    return np.asarray(region.resize((out, out), Image.Resampling.BOX), dtype=np.float32)


def test_mpp_tile_resembles_downsampled_level0(cmu_mpp1: SlideTilingResult) -> None:
    for tile in cmu_mpp1.tiles[:3]:
        ours = _blocks(np.asarray(_image(cmu_mpp1.out_dir / "tiles" / f"x{tile.x}_y{tile.y}.png"), dtype=float))
        mae = np.abs(ours - _blocks(_downsampled_region(CMU, tile.x, tile.y, 449, 224))).mean()
        assert mae < 3.0, mae
        shifted = _blocks(_downsampled_region(CMU, tile.x + 40, tile.y, 449, 224))
        assert np.abs(ours - shifted).mean() > 3 * mae + 3  # the check can tell areas apart


def test_overlap_grid_matches_recomputation(tmp_path: Path) -> None:
    # 224 px at 1 µm/px = 449 level-0 px; 56 output px of overlap = round(56 * 449 / 224) = 112 level-0 px
    result = tile_slide(CMU, tmp_path, tile_size=224, mpp=1.0, overlap=56, mask_size=1024, progress=False)
    check_against_recomputation(result, step=449 - 112, extent=449, min_tissue=0.5)
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    assert (tiles.grid.n_cols, tiles.grid.n_rows) == ((2220 - 449) // 337 + 1, (2967 - 449) // 337 + 1)
    assert tiles.attrs["overlap"] == 56 and tiles.grid.overlap == 112


def test_magnification_uses_objective_power(tmp_path: Path) -> None:
    by_mag = tile_slide(CMU, tmp_path / "mag", tile_size=224, magnification=5, mask_size=512, progress=False)
    by_mpp = tile_slide(CMU, tmp_path / "mpp", tile_size=224, mpp=0.499 * 4, mask_size=512, progress=False)
    a, b = read_coords_h5(by_mag.out_dir / "coords.h5"), read_coords_h5(by_mpp.out_dir / "coords.h5")
    assert a.grid == b.grid and a.grid.read_size == 896 and a.grid.mpp == pytest.approx(1.996)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.attrs["magnification"] == 5 and np.isnan(b.attrs["magnification"])  # not used: stored as NaN
    with pytest.raises(MissingMagnificationError, match=r"tcga-cr-7395-01a-01-ts1\.svs.*objective-power"):
        tile_slide(TCGA, tmp_path, tile_size=224, magnification=10, progress=False)
    with pytest.raises(ValueError, match="not both"):
        tile_slide(CMU, tmp_path / "both", mpp=1.0, magnification=10, progress=False)


def test_tcga_mpp_without_metadata_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingMPPError, match=r"tcga-cr-7395-01a-01-ts1\.svs.*no MPP.*omit --mpp") as info:
        tile_slide(TCGA, tmp_path, tile_size=256, mpp=0.5, progress=False)
    assert isinstance(info.value, ValueError)
    assert not any(tmp_path.rglob("*.h5"))
    with pytest.raises(MissingMPPError):  # a single file is raised through tile_slides too
        tile_slides(TCGA, tmp_path, tile_size=256, mpp=0.5, progress=False)


def test_tcga_native_tiles(tmp_path: Path) -> None:
    result = tile_slide(TCGA, tmp_path, tile_size=512, mask_size=1024, progress=False)
    check_against_recomputation(result, step=512, min_tissue=0.5)
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    assert (tiles.grid.level, tiles.grid.read_size, tiles.grid.mpp, tiles.slide_mpp) == (0, 512, None, None)


def test_tcga_with_given_slide_mpp_reads_level1(tmp_path: Path) -> None:
    result = tile_slide(TCGA, tmp_path, tile_size=256, mpp=0.5, slide_mpp=0.25, min_tissue=0.7,
                        mask_size=1024, export_png=True, progress=False)
    with openslide.OpenSlide(str(TCGA)) as slide:
        level1_ds = slide.level_downsamples[1]
    read_size = round(256 * 2.0 / level1_ds)
    step = round(read_size * level1_ds)
    assert (read_size, step) == (256, 512)
    check_against_recomputation(result, step=step, min_tissue=0.7)
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    assert (tiles.grid.level, tiles.grid.read_size, tiles.grid.mpp, tiles.slide_mpp) == (1, 256, 0.5, 0.25)
    tile = result.tiles[len(result.tiles) // 2]
    ours = _blocks(np.asarray(_image(result.out_dir / "tiles" / f"x{tile.x}_y{tile.y}.png"), dtype=float))
    mae = np.abs(ours - _blocks(_downsampled_region(TCGA, tile.x, tile.y, 512, 256))).mean()
    assert mae < 3.0, mae
    assert np.abs(ours - _blocks(_downsampled_region(TCGA, tile.x + 40, tile.y, 512, 256))).mean() > 3 * mae + 3


def test_single_unreadable_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "empty.svs"
    bad.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty.svs"):
        tile_slides(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "failures.csv").exists()
    assert not (tmp_path / "out" / "empty").exists()


def test_interrupted_slide_is_redone(tmp_path: Path) -> None:
    first = tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, export_png=True, progress=False)
    (first.out_dir / "coords.h5").unlink()  # as if the run died before finishing
    (first.out_dir / "tiles" / "x99999_y0.png").write_bytes(b"stale")
    (first.out_dir / "tiles" / ".x0_y0.png.123.abcd.tmp").write_bytes(b"partial")
    (first.out_dir / ".tissue.geojson.123.abcd.tmp").write_bytes(b"partial")
    second = tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, export_png=True, progress=False)
    assert not second.skipped and second.n_tiles == first.n_tiles
    assert {p.name for p in (second.out_dir / "tiles").iterdir()} == {f"x{t.x}_y{t.y}.png" for t in second.tiles}
    assert not list(second.out_dir.glob(".*"))
    assert tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, progress=False).skipped
    third = tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, overwrite=True, progress=False)
    assert not third.skipped and not (third.out_dir / "tiles").exists()  # coordinates only: PNGs removed


def test_same_stem_slides_get_separate_folders(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CMU, src / "case.svs")
    Image.fromarray(_region(CMU, 0, 0, 1024).astype(np.uint8)).save(src / "case.png")
    summary = tile_slides(src, tmp_path / "out", tile_size=512, mask_size=512, min_tissue=0.0, progress=False)
    assert (summary.slides_done, summary.failures) == (2, [])
    assert (tmp_path / "out" / "case.svs" / "coords.h5").is_file()
    png = read_coords_h5(tmp_path / "out" / "case.png" / "coords.h5")
    assert len(png) == 4 and png.grid.mpp is None  # 2x2 grid, min_tissue 0


def test_pen_removal_keeps_the_sample_slides_tissue() -> None:
    """Neither sample slide has pen marks: removing pen must leave (nearly) the same mask."""
    for slide in (CMU, TCGA):
        with open_slide(slide) as reader:
            plain = slide_tissue_mask(reader, max_size=512).mask
            no_pen = slide_tissue_mask(reader, max_size=512, remove_pen=True).mask
        assert not (no_pen & ~plain).any()
        assert no_pen.sum() >= 0.97 * plain.sum(), (slide.name, no_pen.sum() / plain.sum())


def test_slide_mpp_overriding_real_metadata_warns_and_is_recorded(tmp_path: Path, caplog) -> None:
    """Issue 11 item 8: --slide-mpp silently replaced the CMU slide's own 0.499 µm/px."""
    result = tile_slide(CMU, tmp_path / "o", tile_size=64, mpp=4.0, slide_mpp=1.0, mask_size=512, progress=False)
    assert "--slide-mpp 1 overrides the slide's own MPP metadata 0.499" in caplog.text
    assert result.warning and "overrides" in result.warning
    tiles = read_coords_h5(result.out_dir / "coords.h5")
    assert tiles.slide_mpp == 1.0 and tiles.attrs["metadata_mpp"] == pytest.approx(0.499)
    assert tiles.attrs["slide_mpp_source"] == "--slide-mpp"
    caplog.clear()
    same = tile_slide(CMU, tmp_path / "s", tile_size=64, mpp=4.0, slide_mpp=0.5, mask_size=512, progress=False)
    plain = tile_slide(CMU, tmp_path / "m", tile_size=64, mpp=4.0, mask_size=512, progress=False)
    assert "overrides" not in caplog.text and same.warning is None  # 0.5 is the metadata, rounded
    tiles = read_coords_h5(plain.out_dir / "coords.h5")
    assert tiles.attrs["slide_mpp_source"] == "metadata" and tiles.attrs["metadata_mpp"] == pytest.approx(0.499)
    summary = tile_slides(CMU, tmp_path / "batch", tile_size=64, mpp=4.0, slide_mpp=1.0, mask_size=512,
                          progress=False)
    assert [(p.name, "overrides" in w) for p, w in summary.warnings] == [(CMU.name, True)]
