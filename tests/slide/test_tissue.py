"""Tissue detection on real histolab test tiles and the sample slides.

The histolab tiles live outside the repo (``../shared/data/histolab-tiles``); these
tests fail (not skip) when that folder is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from gcmae.slide.reader import open_slide
from gcmae.slide.tissue import slide_tissue_mask, tissue_mask

REPO = Path(__file__).resolve().parents[2]
HISTOLAB = REPO.parent / "shared" / "data" / "histolab-tiles"
SLIDES = REPO / "data" / "samples" / "slides"

# Clear cases only. Left out: no-tissue-red-pen / no-tissue-green-pen (saturated pen ink is
# detected as tissue by any saturation method) and the nuclei-score / kidney-IHC tiles.
TISSUE = [
    "tissue-level0-4302-10273-4814-10785.png",  # loose stroma, ~56% non-white pixels
    "tissue-level0-7352-11762-7864-12274.png",
    "tissue-level2-1784-6289-5880-10386.png",
    "tissue-level2-3000-7666-7096-11763.png",
    "tissue-level2-4640-4649-8736-8746.png",
    "tissue-level2-4760-5241-8856-9338.png",
]
EMPTY = ["no-tissue.png", "no-tissue2.png", "no-tissue-line.png", "almost-white-1.png", "almost-white-ihc.png"]


def _load(name: str) -> Image.Image:
    assert HISTOLAB.is_dir(), f"histolab test tiles not found at {HISTOLAB} (expected ../shared beside the repo)"
    path = HISTOLAB / name
    assert path.is_file(), f"missing histolab tile {path}"
    with Image.open(path) as image:
        return image.convert("RGB")


def _non_white_fraction(image: Image.Image) -> float:
    """Independent crude tissue estimate: pixels with some channel clearly below white."""
    return float((np.asarray(image).min(axis=2) < 200).mean())


@pytest.mark.parametrize("name", TISSUE)
def test_tissue_tiles_are_mostly_tissue(name: str) -> None:
    image = _load(name)
    mask, _ = tissue_mask(image)
    assert mask.dtype == bool and mask.shape == (image.height, image.width)
    assert mask.mean() > 0.5
    assert abs(mask.mean() - _non_white_fraction(image)) < 0.12


@pytest.mark.parametrize("name", EMPTY)
def test_empty_tiles_have_no_tissue(name: str) -> None:
    mask, threshold = tissue_mask(_load(name))
    assert mask.mean() < 0.01
    assert threshold >= 0.07


def test_almost_white_with_a_tissue_corner() -> None:
    # almost-white-2 is mostly glass but has a sliver of real tissue in its top-right corner
    mask, _ = tissue_mask(_load("almost-white-2.png"))
    assert 0.0 < mask.mean() < 0.1
    assert mask[:100, -100:].mean() > 0.2 and mask[256:, :].mean() < 0.01


def test_saturation_floor_rejects_blank_otsu() -> None:
    image = _load("almost-white-1.png")
    otsu = threshold_otsu(rgb2hsv(np.asarray(image))[..., 1])
    assert otsu < 0.02  # Otsu alone would call ~65% of this blank tile "tissue"
    mask, threshold = tissue_mask(image)
    assert threshold == pytest.approx(0.07) and not mask.any()


def test_saturation_cap_on_tissue_tile() -> None:
    image = _load("tissue-level2-4640-4649-8736-8746.png")
    otsu = threshold_otsu(rgb2hsv(np.asarray(image))[..., 1])
    assert otsu > 0.15  # Otsu splits inside the tissue here
    _, threshold = tissue_mask(image)
    assert threshold == pytest.approx(0.12)


@pytest.mark.parametrize("slide", ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_slide_mask_and_downsample(slide: str) -> None:
    with open_slide(SLIDES / slide) as reader:
        tissue = slide_tissue_mask(reader, max_size=512)
        width, height = reader.dimensions
    mask = tissue.mask
    assert max(mask.shape) == 512
    assert tissue.thumbnail.size == (mask.shape[1], mask.shape[0])
    assert tissue.downsample == pytest.approx((width / mask.shape[1], height / mask.shape[0]))
    assert tissue.downsample[0] == pytest.approx(tissue.downsample[1], rel=0.01)
    assert 0.2 < mask.mean() < 0.8  # both samples are part tissue, part glass
    assert abs(mask.mean() - _non_white_fraction(tissue.thumbnail)) < 0.1
    assert not mask[:8, :8].any()  # top-left corner is glass on both slides
