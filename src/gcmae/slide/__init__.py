"""Whole-slide reading, tissue detection and tiling (``gcmae tile``)."""

from gcmae.slide.batch import TilingSummary, find_slides, tile_slides
from gcmae.slide.coords import COORDS_FILENAME, SlideTiles, TileGrid, read_coords_h5, write_coords_h5
from gcmae.slide.reader import SlideReader, SlideReadError, open_slide
from gcmae.slide.tiling import (
    MissingMagnificationError,
    MissingMPPError,
    SlideTilingResult,
    read_tile,
    tile_slide,
)
from gcmae.slide.tissue import TissueMask, pen_mask, slide_tissue_mask, tissue_mask

__all__ = [
    "COORDS_FILENAME",
    "MissingMPPError",
    "MissingMagnificationError",
    "SlideReadError",
    "SlideReader",
    "SlideTiles",
    "SlideTilingResult",
    "TileGrid",
    "TilingSummary",
    "TissueMask",
    "find_slides",
    "open_slide",
    "pen_mask",
    "read_coords_h5",
    "read_tile",
    "slide_tissue_mask",
    "tile_slide",
    "tile_slides",
    "tissue_mask",
    "write_coords_h5",
]
