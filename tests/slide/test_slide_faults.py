"""Bad slides in a folder, made here from the real shipped slides: each is reported, the batch completes.

Cases: a truncated SVS, a PNG renamed .svs, a text file named .svs, a slide with no tissue (a TIFF of real glass
background cut from the CMU slide), a slide without MPP tiled with --mpp, and pyramidal TIFFs of real CMU pixels
where one level's tile data is zeroed (level 0 partly: fails while tiles are exported as PNGs; level 1: fails
while the tissue mask is made). Without --export-png, level-0 tile data is never read, so the level-0 fault
goes unnoticed there (see test_coordinates_only_run_reads_no_tile_data).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import gcmae.slide.tiling as tiling
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.batch import tile_slides
from gcmae.slide.tiling import tile_slide
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

CMU = SAMPLES / "slides" / "cmu-1-small-region.svs"  # 2220 x 2967, 0.499 µm/px
TCGA = SAMPLES / "slides" / "tcga-cr-7395-01a-01-ts1.svs"  # no MPP
PNG = sorted((SAMPLES / "crc-val-he-7k" / "LYM").glob("*.png"))[0]
OPTS = {"tile_size": 512, "mask_size": 512, "export_png": True, "progress": False}
JOB_FILES = ["failures.csv", "summary.json", "tiling_config.yaml"]


def _cmu_region(x: int, y: int, w: int, h: int) -> np.ndarray:
    with openslide.OpenSlide(str(CMU)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))


def write_pyramid(path: Path, base: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """A tiled, deflate-compressed pyramidal TIFF (OpenSlide 'generic-tiff') with 2x box-downsampled levels."""
    pyramid = [base]
    for _ in range(levels - 1):
        img = Image.fromarray(pyramid[-1])
        pyramid.append(np.asarray(img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)))
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(pyramid):
            tif.write(level, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=int(i > 0))
    return pyramid


def zero_tiles(path: Path, level: int, first_tile: int = 0) -> None:
    """Overwrite the compressed data of `level`'s tiles (from `first_tile` on) with zeros, in place."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        spans = list(zip(page.dataoffsets, page.databytecounts))[first_tile:]
    with open(path, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(bytes(count))


def make_faulty_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copy(CMU, folder / "good.svs")
    data = CMU.read_bytes()
    (folder / "truncated.svs").write_bytes(data[: int(len(data) * 0.6)])
    shutil.copy(PNG, folder / "png_renamed.svs")
    (folder / "text.svs").write_text("Aperio Image Library v12.0.15\nnot a slide, a text file\n")
    strip = _cmu_region(1990, 0, 230, 2967)  # the slide's right margin: glass only
    blank = np.concatenate([strip if i % 2 == 0 else strip[:, ::-1] for i in range(8)], axis=1)
    tifffile.imwrite(folder / "no_tissue.tif", blank, tile=(256, 256), compression="zlib", photometric="rgb")
    base = _cmu_region(300, 800, 1536, 1536)
    write_pyramid(folder / "bad_level0.tif", base)
    zero_tiles(folder / "bad_level0.tif", level=0, first_tile=18)  # rows 3-5 of 6: read after some tiles
    write_pyramid(folder / "bad_level1.tif", base)
    zero_tiles(folder / "bad_level1.tif", level=1)  # the level the thumbnail / tissue mask is read from


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


EXPECTED_FAILURES = {
    "truncated.svs": "not a supported slide format or corrupt",
    "png_renamed.svs": "not a supported slide format or corrupt",
    "text.svs": "not a supported slide format or corrupt",
    "bad_level0.tif": "corrupt or unreadable image data",
    "bad_level1.tif": "corrupt or unreadable image data",
}


def test_faulty_slides_are_reported_and_the_batch_completes(tmp_path: Path, monkeypatch) -> None:
    src, out = tmp_path / "slides", tmp_path / "out"
    make_faulty_folder(src)
    reference = tile_slide(CMU, tmp_path / "reference", name="good", **OPTS)
    written: list[Path] = []
    real_save = tiling._save_png
    monkeypatch.setattr(tiling, "_save_png", lambda image, path: (written.append(path), real_save(image, path)))

    summary = tile_slides(src, out, **OPTS)

    assert {p.name: r for p, r in summary.failures}.keys() == EXPECTED_FAILURES.keys()
    for slide, reason in summary.failures:
        assert slide.name in reason and EXPECTED_FAILURES[slide.name] in reason, reason
    rows = _csv(out / "failures.csv")
    assert {Path(r["path"]).name: r["reason"] for r in rows} == {p.name: r for p, r in summary.failures}
    assert (summary.slides_done, summary.slides_skipped, summary.slides_busy) == (2, 0, 0)
    # the finished good slide is complete and identical to tiling it alone
    good, ref = read_coords_h5(out / "good" / "coords.h5"), read_coords_h5(reference.out_dir / "coords.h5")
    assert good.grid == ref.grid and len(good) == reference.n_tiles
    np.testing.assert_array_equal(good.coords, ref.coords)
    np.testing.assert_array_equal(good.tissue_fraction, ref.tissue_fraction)
    for name in ("thumbnail.png", "tissue_mask.png", "tissue.geojson"):
        assert (out / "good" / name).read_bytes() == (reference.out_dir / name).read_bytes(), name
    assert sorted(p.name for p in (out / "good" / "tiles").iterdir()) == \
        sorted(p.name for p in (reference.out_dir / "tiles").iterdir()) and reference.n_tiles > 0
    assert summary.tiles_written == reference.n_tiles
    # no tissue: finished with 0 tiles and a warning, not a failure
    assert [(p.name, w) for p, w in summary.warnings] == [("no_tissue.tif", "no tissue detected: 0 tiles")]
    assert len(read_coords_h5(out / "no_tissue" / "coords.h5")) == 0
    assert not any((out / "no_tissue" / "tiles").iterdir())
    # a slide that failed part-way wrote tiles, and none of them is left to be mistaken for output
    assert any(p.parent.parent.name == "bad_level0" and p.parent.name == "tiles" for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted([*JOB_FILES, "good", "no_tissue"])
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".lock"))]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in JOB_FILES}
    again = tile_slides(src, out, **OPTS)
    assert (again.slides_done, again.slides_skipped) == (0, 2)
    assert {p.name for p, _ in again.failures} == EXPECTED_FAILURES.keys()
    assert {Path(r["path"]).name for r in _csv(out / "failures.csv")} == EXPECTED_FAILURES.keys()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished outputs untouched


def test_slide_without_mpp_fails_only_itself_when_mpp_is_requested(tmp_path: Path) -> None:
    src = tmp_path / "slides"
    src.mkdir()
    shutil.copy(CMU, src / "cmu.svs")
    shutil.copy(TCGA, src / "tcga.svs")
    summary = tile_slides(src, tmp_path / "out", mpp=1.0, **OPTS)
    assert summary.slides_done == 1 and summary.tiles_written > 0
    [(slide, reason)] = summary.failures
    assert slide.name == "tcga.svs" and "no MPP metadata" in reason and "--slide-mpp" in reason
    assert [Path(r["path"]).name for r in _csv(tmp_path / "out" / "failures.csv")] == ["tcga.svs"]
    assert not (tmp_path / "out" / "tcga").exists()
    coords = read_coords_h5(tmp_path / "out" / "cmu" / "coords.h5")
    assert len(coords) > 0 and coords.grid.mpp == 1.0


def test_failure_rows_are_dropped_once_the_slide_is_fixed(tmp_path: Path) -> None:
    src, out = tmp_path / "slides", tmp_path / "out"
    src.mkdir()
    shutil.copy(PNG, src / "case.svs")  # not a slide
    shutil.copy(CMU, src / "other.svs")
    assert [p.name for p, _ in tile_slides(src, out, **OPTS).failures] == ["case.svs"]
    shutil.copy(CMU, src / "case.svs")  # replaced by the real slide
    summary = tile_slides(src, out, **OPTS)
    assert (summary.slides_done, summary.slides_skipped, summary.failures) == (1, 1, [])
    assert _csv(out / "failures.csv") == []


@pytest.mark.parametrize("level", [0, 1])
def test_single_slide_with_unreadable_level_raises_and_leaves_nothing(tmp_path: Path, level: int) -> None:
    slide = tmp_path / "pyramid.tif"
    write_pyramid(slide, _cmu_region(300, 800, 1536, 1536))
    zero_tiles(slide, level=level, first_tile=18 if level == 0 else 0)
    with pytest.raises(tiling.SlideReadError, match="pyramid.tif"):
        tile_slides(slide, tmp_path / "out", **OPTS)
    assert not (tmp_path / "out" / "pyramid").exists()
    assert not list((tmp_path / "out").glob(".*"))


def test_coordinates_only_run_reads_no_tile_data(tmp_path: Path) -> None:
    """Level-0 tile data is only read to export PNGs: a corrupt level 0 goes unnoticed without --export-png
    (the slide is finished, with coordinates), and is reported as soon as its tiles are read."""
    slide = tmp_path / "pyramid.tif"
    write_pyramid(slide, _cmu_region(300, 800, 1536, 1536))
    zero_tiles(slide, level=0, first_tile=18)
    summary = tile_slides(slide, tmp_path / "coords_only", tile_size=512, mask_size=512, progress=False)
    assert summary.slides_done == 1 and summary.tiles_written > 0
    with pytest.raises(tiling.SlideReadError, match="corrupt or unreadable image data"):
        tile_slides(slide, tmp_path / "png", **OPTS)
