"""Slide reader tests on the real sample slides shipped in data/samples/slides.

Expected geometry/MPP are read independently from the TIFF tags with tifffile; pixel
content is checked against the SVS's embedded thumbnail image decoded by PIL.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from gcmae.slide.reader import ImageReader, OpenSlideReader, SlideReadError, open_slide

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "data" / "samples" / "slides"
CMU = SLIDES / "cmu-1-small-region.svs"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"


def _tiff_levels(path: Path) -> list[tuple[int, int]]:
    """(width, height) of the tiled pages (= pyramid levels) of an SVS, via tifffile."""
    with tifffile.TiffFile(path) as tif:
        return [(p.imagewidth, p.imagelength) for p in tif.pages if p.is_tiled]


def _tiff_mpp(path: Path) -> float | None:
    with tifffile.TiffFile(path) as tif:
        match = re.search(r"\|MPP = ([0-9.]+)", tif.pages[0].description)
    return float(match.group(1)) if match else None


@pytest.mark.parametrize("path", [CMU, TCGA], ids=["cmu", "tcga"])
def test_geometry_matches_tiff_tags(path: Path) -> None:
    levels = _tiff_levels(path)
    with open_slide(path) as slide:
        assert isinstance(slide, OpenSlideReader)
        assert slide.dimensions == levels[0]
        assert slide.level_count == len(levels)
        assert list(slide.level_dimensions) == levels
        expected_ds = [levels[0][0] / w for w, _ in levels]
        assert slide.level_downsamples == pytest.approx(expected_ds, rel=1e-3)


def test_objective_power_matches_the_svs_description() -> None:
    with tifffile.TiffFile(CMU) as tif:
        app_mag = float(re.search(r"\|AppMag = ([0-9.]+)", tif.pages[0].description).group(1))
    with tifffile.TiffFile(TCGA) as tif:
        assert "AppMag" not in tif.pages[0].description
    with open_slide(CMU) as cmu, open_slide(TCGA) as tcga:
        assert cmu.objective_power == app_mag == 20.0
        assert tcga.objective_power is None


def test_known_values() -> None:
    with open_slide(CMU) as cmu, open_slide(TCGA) as tcga:
        assert cmu.dimensions == (2220, 2967) and cmu.level_count == 1
        assert cmu.mpp == pytest.approx(0.499)
        assert _tiff_mpp(CMU) == pytest.approx(0.499)
        assert tcga.dimensions == (4443, 3567) and tcga.level_count == 2
        assert tcga.mpp is None
        assert _tiff_mpp(TCGA) is None


@pytest.mark.parametrize(("location", "level", "size"), [((0, 0), 0, (64, 48)), ((1000, 1500), 0, (300, 200)),
                                                         ((2000, 1000), 1, (128, 96))])
def test_read_region_size_and_mode(location: tuple[int, int], level: int, size: tuple[int, int]) -> None:
    with open_slide(TCGA) as slide:
        region = slide.read_region(location, level, size)
    assert region.mode == "RGB"
    assert region.size == size


def test_read_region_past_the_edge_is_white() -> None:
    with open_slide(CMU) as slide:
        w, h = slide.dimensions
        region = np.asarray(slide.read_region((w - 10, h - 10), 0, (40, 40)))
    assert region.shape == (40, 40, 3)
    assert (region[15:, :] == 255).all() and (region[:, 15:] == 255).all()


def _block_mean(a: np.ndarray, k: int = 8) -> np.ndarray:
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def test_thumbnail_matches_embedded_svs_thumbnail() -> None:
    with Image.open(CMU) as svs:
        svs.seek(1)  # page 1 of an Aperio SVS is its (independently stored) thumbnail image
        embedded = svs.convert("RGB")
    with open_slide(CMU) as slide:
        thumb = slide.thumbnail(max(embedded.size))
    assert thumb.mode == "RGB"
    assert abs(thumb.size[0] - embedded.size[0]) <= 1 and thumb.size[1] == embedded.size[1]
    ours = _block_mean(np.asarray(thumb.resize(embedded.size, Image.Resampling.BOX), dtype=np.float32))
    ref = np.asarray(embedded, dtype=np.float32)
    mae = np.abs(ours - _block_mean(ref)).mean()
    assert mae < 3.0, mae
    # the comparison is discriminative: a 20 px shift of the reference is far off
    assert np.abs(ours - _block_mean(np.roll(ref, 20, axis=1))).mean() > 10.0


def test_best_level_for_downsample() -> None:
    with open_slide(TCGA) as tcga, open_slide(CMU) as cmu:
        assert [tcga.get_best_level_for_downsample(d) for d in (0.5, 1.0, 1.9, 2.0, 3.0, 16.0)] == [0, 0, 0, 1, 1, 1]
        assert cmu.get_best_level_for_downsample(8.0) == 0


def test_truncated_svs_raises_naming_file(tmp_path: Path) -> None:
    data = CMU.read_bytes()
    bad = tmp_path / "truncated-copy.svs"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="truncated-copy.svs"):
        open_slide(bad)


def test_text_file_renamed_svs_raises(tmp_path: Path) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("this is not a slide\n")
    with pytest.raises(SlideReadError, match=r"notes\.svs.*not a supported slide format or corrupt"):
        open_slide(bad)
    bad_png = tmp_path / "notes.png"
    shutil.copy(bad, bad_png)
    with pytest.raises(SlideReadError, match=r"notes\.png"):
        open_slide(bad_png)


def test_corrupt_tile_data_raises_on_read(tmp_path: Path) -> None:
    data = bytearray(CMU.read_bytes())
    data[200_000:1_200_000] = bytes(1_000_000)  # zero out compressed tile data, keep the header
    bad = tmp_path / "zeroed.svs"
    bad.write_bytes(bytes(data))
    with open_slide(bad) as slide, pytest.raises(SlideReadError, match="zeroed.svs"):
        slide.thumbnail(256)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "nope.svs")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_plain_image_fallback(tmp_path: Path, suffix: str) -> None:
    with open_slide(CMU) as slide:
        region = np.asarray(slide.read_region((600, 900), 0, (300, 200)))
    path = tmp_path / f"region{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, region)  # plain striped TIFF: OpenSlide refuses it, PIL reads it
    else:
        Image.fromarray(region).save(path)
    with open_slide(path) as img:
        assert isinstance(img, ImageReader)
        assert img.dimensions == (300, 200) and img.level_count == 1 and img.mpp is None
        assert img.level_downsamples == (1.0,)
        crop = np.asarray(img.read_region((50, 20), 0, (100, 80)))
        np.testing.assert_array_equal(crop, region[20:100, 50:150])
        edge = np.asarray(img.read_region((250, 150), 0, (100, 100)))
        np.testing.assert_array_equal(edge[:50, :50], region[150:, 250:])
        assert (edge[50:] == 255).all() and (edge[:, 50:] == 255).all()
        assert max(img.thumbnail(64).size) == 64
