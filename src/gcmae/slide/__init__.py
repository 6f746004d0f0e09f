"""Whole-slide reading, tissue detection and tiling (``gcmae tile``)."""

from gcmae.slide.reader import SlideReader, SlideReadError, open_slide
from gcmae.slide.tiling import (
    MissingMPPError,
    SlideTilingResult,
    TilingSummary,
    find_slides,
    tile_slide,
    tile_slides,
)
from gcmae.slide.tissue import TissueMask, slide_tissue_mask, tissue_mask

__all__ = [
    "MissingMPPError",
    "SlideReadError",
    "SlideReader",
    "SlideTilingResult",
    "TilingSummary",
    "TissueMask",
    "find_slides",
    "open_slide",
    "slide_tissue_mask",
    "tile_slide",
    "tile_slides",
    "tissue_mask",
]
