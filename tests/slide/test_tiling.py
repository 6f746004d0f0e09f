"""Tiling tests on the real sample slides.

Expected tiles are recomputed here independently of ``tissue_fractions``: for every grid
cell fully inside the slide, the mean of the mask pixels whose centre (level-0 coords)
lies in the cell, kept when >= min_tissue.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from gcmae.slide.reader import SlideReadError
from gcmae.slide.tiling import MissingMPPError, SlideTilingResult, tile_slide, tile_slides

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "data" / "samples" / "slides"
CMU = SLIDES / "cmu-1-small-region.svs"  # 2220 x 2967, one level, 0.499 µm/px
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"  # 4443 x 3567, two levels, no MPP
COLUMNS = ["x", "y", "level", "read_size", "tile_size", "mpp", "tissue_fraction"]


def _expected(mask: np.ndarray, downsample: tuple[float, float], step: int, width: int, height: int,
              min_tissue: float) -> dict[tuple[int, int], float]:
    dx, dy = downsample
    centre_x = (np.arange(mask.shape[1]) + 0.5) * dx
    centre_y = (np.arange(mask.shape[0]) + 0.5) * dy
    kept = {}
    for y in range(0, height - step + 1, step):
        rows = (centre_y >= y) & (centre_y < y + step)
        for x in range(0, width - step + 1, step):
            cols = (centre_x >= x) & (centre_x < x + step)
            fraction = float(mask[np.ix_(rows, cols)].mean())
            if fraction >= min_tissue:
                kept[(x, y)] = fraction
    return kept


def _image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rows(result: SlideTilingResult) -> list[dict[str, str]]:
    with open(result.out_dir / "coords.csv", newline="") as fh:
        assert next(csv.reader(fh)) == COLUMNS
    return _csv(result.out_dir / "coords.csv")


def _check_against_recomputation(result: SlideTilingResult, step: int, min_tissue: float) -> list[dict[str, str]]:
    assert result.tissue is not None and not result.skipped
    with openslide.OpenSlide(str(result.slide)) as slide:
        width, height = slide.dimensions
    expected = _expected(result.tissue.mask, result.tissue.downsample, step, width, height, min_tissue)
    n_cells = (width // step) * (height // step)
    assert 0 < len(expected) < n_cells  # the threshold matters on this slide
    rows = _rows(result)
    got = {(int(r["x"]), int(r["y"])): float(r["tissue_fraction"]) for r in rows}
    assert set(got) == set(expected)
    for key, fraction in expected.items():
        assert got[key] == pytest.approx(fraction, abs=1e-5)
    tile_files = {p.name for p in (result.out_dir / "tiles").iterdir()}
    assert tile_files == {f"x{x}_y{y}.png" for x, y in expected}
    stored_mask = np.asarray(_image(result.out_dir / "tissue_mask.png")) > 0
    np.testing.assert_array_equal(stored_mask, result.tissue.mask)
    return rows


def _region(path: Path, x: int, y: int, size: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"), dtype=np.float32)


def _tile(result: SlideTilingResult, x: int, y: int) -> np.ndarray:
    return np.asarray(_image(result.out_dir / "tiles" / f"x{x}_y{y}.png"), dtype=np.float32)


@pytest.fixture(scope="module")
def cmu_native(tmp_path_factory: pytest.TempPathFactory) -> SlideTilingResult:
    return tile_slide(CMU, tmp_path_factory.mktemp("native"), tile_size=224, min_tissue=0.5, progress=False)


@pytest.fixture(scope="module")
def cmu_mpp1(tmp_path_factory: pytest.TempPathFactory) -> SlideTilingResult:
    return tile_slide(CMU, tmp_path_factory.mktemp("mpp1"), tile_size=224, mpp=1.0, min_tissue=0.5, progress=False)


def test_native_grid_matches_recomputation(cmu_native: SlideTilingResult) -> None:
    assert cmu_native.out_dir.name == "cmu-1-small-region"
    rows = _check_against_recomputation(cmu_native, step=224, min_tissue=0.5)
    assert {(r["level"], r["read_size"], r["tile_size"], r["mpp"]) for r in rows} == {("0", "224", "224", "0.499")}
    assert cmu_native.n_tiles == len(rows)


def test_native_tiles_are_exact_level0_crops(cmu_native: SlideTilingResult) -> None:
    for tile in cmu_native.tiles[:: max(1, cmu_native.n_tiles // 5)]:
        image = _image(cmu_native.out_dir / "tiles" / f"x{tile.x}_y{tile.y}.png")
        assert image.size == (224, 224) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), _region(CMU, tile.x, tile.y, 224).astype(np.uint8))


def test_outputs_complete_and_coords_written_last(cmu_native: SlideTilingResult) -> None:
    files = [p for p in cmu_native.out_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]
    thumb = _image(cmu_native.out_dir / "thumbnail.png")
    assert thumb.size == cmu_native.tissue.thumbnail.size  # type: ignore[union-attr]
    coords_mtime = (cmu_native.out_dir / "coords.csv").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= coords_mtime for p in files)


def test_mpp_grid_matches_recomputation(cmu_mpp1: SlideTilingResult) -> None:
    step = round(224 * 1.0 / 0.499)  # level-0 px covering 224 px at 1.0 µm/px
    assert step == 449
    rows = _check_against_recomputation(cmu_mpp1, step=step, min_tissue=0.5)
    assert {(r["level"], r["read_size"], r["tile_size"], r["mpp"]) for r in rows} == {("0", "449", "224", "1")}
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
        ours = _blocks(_tile(cmu_mpp1, tile.x, tile.y))
        mae = np.abs(ours - _blocks(_downsampled_region(CMU, tile.x, tile.y, 449, 224))).mean()
        assert mae < 3.0, mae
        shifted = _blocks(_downsampled_region(CMU, tile.x + 40, tile.y, 449, 224))
        assert np.abs(ours - shifted).mean() > 3 * mae + 3  # the check can tell areas apart


def test_tcga_mpp_without_metadata_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingMPPError, match=r"tcga-cr-7395-01a-01-ts1\.svs.*no MPP.*omit --mpp") as info:
        tile_slide(TCGA, tmp_path, tile_size=256, mpp=0.5, progress=False)
    assert isinstance(info.value, ValueError)
    assert not any(tmp_path.rglob("*.csv"))
    with pytest.raises(MissingMPPError):  # a single file is raised through tile_slides too
        tile_slides(TCGA, tmp_path, tile_size=256, mpp=0.5, progress=False)


def test_tcga_native_tiles(tmp_path: Path) -> None:
    result = tile_slide(TCGA, tmp_path, tile_size=512, mask_size=1024, progress=False)
    rows = _check_against_recomputation(result, step=512, min_tissue=0.5)
    assert {(r["level"], r["read_size"], r["tile_size"], r["mpp"]) for r in rows} == {("0", "512", "512", "")}


def test_tcga_with_given_slide_mpp_reads_level1(tmp_path: Path) -> None:
    result = tile_slide(TCGA, tmp_path, tile_size=256, mpp=0.5, slide_mpp=0.25, min_tissue=0.7,
                        mask_size=1024, progress=False)
    with openslide.OpenSlide(str(TCGA)) as slide:
        level1_ds = slide.level_downsamples[1]
    read_size = round(256 * 2.0 / level1_ds)
    step = round(read_size * level1_ds)
    assert (read_size, step) == (256, 512)
    rows = _check_against_recomputation(result, step=step, min_tissue=0.7)
    assert {(r["level"], r["read_size"], r["mpp"]) for r in rows} == {("1", "256", "0.5")}
    tile = result.tiles[len(result.tiles) // 2]
    ours = _blocks(_tile(result, tile.x, tile.y))
    mae = np.abs(ours - _blocks(_downsampled_region(TCGA, tile.x, tile.y, 512, 256))).mean()
    assert mae < 3.0, mae
    assert np.abs(ours - _blocks(_downsampled_region(TCGA, tile.x + 40, tile.y, 512, 256))).mean() > 3 * mae + 3


def test_folder_run_failures_and_rerun(tmp_path: Path) -> None:
    src = tmp_path / "slides"
    src.mkdir()
    shutil.copy(CMU, src / CMU.name)
    shutil.copy(TCGA, src / TCGA.name)
    data = CMU.read_bytes()
    (src / "broken.svs").write_bytes(data[: len(data) // 3])
    (src / "readme.txt").write_text("not a slide extension: ignored\n")
    out = tmp_path / "out"

    summary = tile_slides(src, out, tile_size=512, mask_size=1024, progress=False)
    assert (summary.slides_done, summary.slides_skipped) == (2, 0)
    assert [p.name for p, _ in summary.failures] == ["broken.svs"]
    assert "broken.svs" in summary.failures[0][1]
    failures = _csv(out / "failures.csv")
    assert [Path(r["path"]).name for r in failures] == ["broken.svs"] and failures[0]["reason"]
    n_rows = sum(len(_csv(out / s.stem / "coords.csv")) for s in (CMU, TCGA))
    assert summary.tiles_written == n_rows > 0
    assert sorted(p.name for p in out.iterdir()) == sorted([CMU.stem, TCGA.stem, "failures.csv"])
    assert not list(out.rglob("*.tmp"))

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "failures.csv"}
    again = tile_slides(src, out, tile_size=512, mask_size=1024, progress=False)
    assert (again.slides_done, again.slides_skipped, again.tiles_written) == (0, 2, 0)
    assert [p.name for p, _ in again.failures] == ["broken.svs"]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "failures.csv"}
    assert after == before


def test_single_unreadable_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "empty.svs"
    bad.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty.svs"):
        tile_slides(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "failures.csv").exists()
    assert not (tmp_path / "out" / "empty").exists()


def test_interrupted_slide_is_redone(tmp_path: Path) -> None:
    first = tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, progress=False)
    (first.out_dir / "coords.csv").unlink()  # as if the run died before finishing
    (first.out_dir / "tiles" / "x99999_y0.png").write_bytes(b"stale")
    (first.out_dir / "tiles" / ".x0_y0.png.123.abcd.tmp").write_bytes(b"partial")
    second = tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, progress=False)
    assert not second.skipped and second.n_tiles == first.n_tiles
    assert {p.name for p in (second.out_dir / "tiles").iterdir()} == {f"x{t.x}_y{t.y}.png" for t in second.tiles}
    assert tile_slide(CMU, tmp_path, tile_size=512, mask_size=512, progress=False).skipped


def test_same_stem_slides_get_separate_folders(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CMU, src / "case.svs")
    Image.fromarray(_region(CMU, 0, 0, 1024).astype(np.uint8)).save(src / "case.png")
    summary = tile_slides(src, tmp_path / "out", tile_size=512, mask_size=512, min_tissue=0.0, progress=False)
    assert (summary.slides_done, summary.failures) == (2, [])
    assert (tmp_path / "out" / "case.svs" / "coords.csv").is_file()
    png_rows = _csv(tmp_path / "out" / "case.png" / "coords.csv")
    assert len(png_rows) == 4 and {r["mpp"] for r in png_rows} == {""}  # 2x2 grid, min_tissue 0
