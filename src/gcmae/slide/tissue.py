"""Tissue detection on a low-resolution slide thumbnail.

Tissue = pixels whose HSV saturation exceeds a threshold, cleaned by morphology.
The threshold is Otsu's on the saturation channel, clipped to
``[sat_floor, sat_cap]``:

* the floor (0.07) rejects glass: on an empty/near-white image Otsu splits noise
  (thresholds ~0.004-0.06 on the histolab "almost-white"/"no-tissue" tiles), and an
  absolute floor makes such images come out (near) empty;
* the cap (0.12) keeps pale tissue: when the image is mostly tissue, or has strongly
  saturated pen marks, Otsu lands at 0.2-0.57 and splits *inside* the tissue
  (e.g. only 42-74% of the histolab "tissue-*" tiles were kept without the cap,
  58-83% with it). Glass background measured < 0.03 (90th pct) on the sample slides.

Optional pen-mark removal (``remove_pen``, see :func:`pen_mask`) and the mask's outlines as polygons in
level-0 coordinates (:meth:`TissueMask.polygons`, :meth:`TissueMask.to_geojson`, QuPath-compatible).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.measure import approximate_polygon, find_contours

from gcmae.slide.reader import SlideReader

DEFAULT_MASK_SIZE = 2048  # longest side of the thumbnail the mask is computed on


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask of a slide thumbnail.

    ``downsample`` is ``(level0_width / mask_width, level0_height / mask_height)``:
    mask pixel ``(row, col)`` covers level-0 x in ``[col*dx, (col+1)*dx)`` and
    y in ``[row*dy, (row+1)*dy)``.
    """

    mask: np.ndarray  # (H, W) bool
    downsample: tuple[float, float]
    thumbnail: Image.Image  # RGB thumbnail the mask was computed on
    threshold: float  # saturation threshold actually used

    def polygons(self, tolerance: float = 1.0) -> list[list[np.ndarray]]:
        """Outline of every tissue region as ``[exterior, *holes]`` rings of ``(x, y)`` level-0 coordinates
        (closed: first point == last; exterior counter-clockwise, holes clockwise as GeoJSON wants), simplified
        to within ``tolerance`` mask pixels. Regions are 4-connected components of :attr:`mask`; a ring runs
        through the boundary between tissue and background pixel centres, so it lies within the slide."""
        dx, dy = self.downsample
        labels, n = ndimage.label(self.mask)
        out = []
        for i, region in enumerate(ndimage.find_objects(labels), start=1):
            # a 1-pixel background frame closes every contour, also for regions touching the border
            comp = np.pad(labels[region] == i, 1)
            rings = []
            for contour in find_contours(comp.astype(np.float32), 0.5):
                if tolerance > 0:
                    contour = approximate_polygon(contour, tolerance)
                if len(contour) < 4:
                    continue
                x = (contour[:, 1] - 1 + region[1].start + 0.5) * dx
                y = (contour[:, 0] - 1 + region[0].start + 0.5) * dy
                rings.append(np.stack([x, y], axis=1))
            if not rings:
                continue
            rings.sort(key=lambda r: -abs(_signed_area(r)))  # the exterior encloses all the holes
            exterior, holes = rings[0], rings[1:]
            out.append([_orient(exterior, ccw=True), *(_orient(h, ccw=False) for h in holes)])
        return out

    def to_geojson(self, tolerance: float = 1.0) -> dict[str, Any]:
        """A GeoJSON FeatureCollection with one Polygon per tissue region, in level-0 pixel coordinates,
        as QuPath imports it (``objectType: annotation``, classification ``Tissue``)."""
        features = [{
            "type": "Feature",
            "geometry": {"type": "Polygon",
                         "coordinates": [[[round(float(x), 2), round(float(y), 2)] for x, y in ring]
                                         for ring in polygon]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}},
        } for polygon in self.polygons(tolerance)]
        return {"type": "FeatureCollection", "features": features}


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring of (x, y), positive when counter-clockwise (x right, y up: the RFC 7946
    convention is applied to the numbers, as GeoJSON validators do, although image y points down)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _orient(ring: np.ndarray, ccw: bool) -> np.ndarray:
    return ring if (_signed_area(ring) > 0) == ccw else ring[::-1]


def saturation_threshold(saturation: np.ndarray, sat_floor: float = 0.07, sat_cap: float = 0.12) -> float:
    """Otsu threshold of ``saturation`` (values in [0, 1]) clipped to ``[sat_floor, sat_cap]``."""
    if saturation.size == 0 or float(saturation.max()) <= float(saturation.min()):
        otsu = 0.0  # constant image: nothing to separate -> floor decides
    else:
        otsu = float(threshold_otsu(saturation))
    return float(min(max(otsu, sat_floor), max(sat_cap, sat_floor)))


def tissue_mask(
    image: Image.Image | np.ndarray,
    sat_floor: float = 0.07,
    sat_cap: float = 0.12,
    dark_value: float = 0.1,
    morph_radius: int | None = None,
    max_hole_frac: float = 0.001,
    min_object_frac: float = 0.0005,
    remove_pen: bool = False,
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB image and the saturation threshold used.

    Steps: saturation > clipped Otsu threshold (see module doc); pixels darker than
    ``dark_value`` (HSV value) are excluded (black scan borders); binary closing then
    opening with a disk of ``morph_radius`` px (default: longest side / 512, >= 1);
    holes smaller than ``max_hole_frac`` of the image area are filled; objects smaller
    than ``min_object_frac`` of the image area are removed. With ``remove_pen``, :func:`pen_mask`
    pixels are then removed (and the hole filling / small-object removal repeated).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return np.zeros(rgb.shape[:2], dtype=bool), float(sat_floor)
    saturation, value = _saturation_value(rgb)
    threshold = saturation_threshold(saturation, sat_floor, sat_cap)
    mask = (saturation > threshold) & (value > dark_value)
    if not mask.any():
        return mask, threshold
    radius = morph_radius if morph_radius is not None else max(1, round(max(mask.shape) / 512))
    if radius > 0:
        mask = _morph(ndimage.binary_closing, mask, radius)
        mask = _morph(ndimage.binary_opening, mask, radius)
    area = mask.size
    mask = ~_remove_small_components(~mask, int(max_hole_frac * area))  # fill small holes
    mask = _remove_small_components(mask, int(min_object_frac * area))
    if remove_pen and mask.any():
        mask &= ~pen_mask(rgb)
        mask = ~_remove_small_components(~mask, int(max_hole_frac * area))
        mask = _remove_small_components(mask, int(min_object_frac * area))
    return mask, threshold


# Pen ink colours as HSV rules (hue in degrees). H&E stains are magenta-pink (eosin, hue ~300-345) and
# purple-blue (haematoxylin, ~250-300), never green or cyan, rarely pure red; marker ink is saturated red,
# green/teal, blue, or a dark red-purple. Measured on the histolab pen tiles (see tests/slide/test_tissue.py).
_PEN_RULES = {  # name: (hue_lo, hue_hi, min_saturation, max_value)
    "red": (345.0, 380.0, 0.10, 1.0),  # hue wraps: 345-360 and 0-20
    "dark_red": (320.0, 345.0, 0.10, 0.55),
    "green": (70.0, 200.0, 0.15, 1.0),
    "blue": (190.0, 250.0, 0.20, 1.0),
}


def pen_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """Boolean mask of marker-pen ink (red, dark red, green, blue) in an RGB image.

    Pixels matching a colour rule (``_PEN_RULES``) are cleaned by an opening (radius longest side / 256)
    and by dropping pieces under 0.2 % of the image, so isolated stain pixels of a pen-like hue are not
    taken as ink; the remaining strokes are dilated by longest side / 512 px to take their blurred rim."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    hsv = rgb2hsv(rgb)
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    for lo, hi, min_sat, max_val in _PEN_RULES.values():
        in_hue = (hue >= lo) & (hue < hi) if hi <= 360 else (hue >= lo) | (hue < hi - 360)
        ink |= in_hue & (sat > min_sat) & (val < max_val if max_val < 1 else True)
    if not ink.any():
        return ink
    longest = max(ink.shape)
    ink = _morph(ndimage.binary_opening, ink, max(1, round(longest / 256)))
    ink = _remove_small_components(ink, int(0.002 * ink.size))
    return _morph(ndimage.binary_dilation, ink, max(1, round(longest / 512))) if ink.any() else ink


def _saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation ``(max-min)/max`` and value ``max`` (both in [0, 1]) of an RGB array."""
    scale = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    cmax = rgb.max(axis=2).astype(np.float32) / scale
    cmin = rgb.min(axis=2).astype(np.float32) / scale
    saturation = np.divide(cmax - cmin, cmax, out=np.zeros_like(cmax), where=cmax > 0)
    return saturation, cmax


def _morph(op: Callable[..., np.ndarray], mask: np.ndarray, radius: int) -> np.ndarray:
    """Apply a binary morphology ``op`` with a disk footprint, edge-padded so that
    the image border does not act as background."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    footprint = xx**2 + yy**2 <= radius**2
    padded = np.pad(mask, 2 * radius, mode="edge")
    return op(padded, structure=footprint)[2 * radius : -2 * radius, 2 * radius : -2 * radius]


def _remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 4-connected True components with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def slide_tissue_mask(reader: SlideReader, max_size: int = DEFAULT_MASK_SIZE, **kwargs: Any) -> TissueMask:
    """Compute :func:`tissue_mask` on a ``max_size`` thumbnail of ``reader``.

    Extra keyword arguments are passed to :func:`tissue_mask`.
    """
    thumb = reader.thumbnail(max_size)
    mask, threshold = tissue_mask(thumb, **kwargs)
    width, height = reader.dimensions
    downsample = (width / mask.shape[1], height / mask.shape[0])
    return TissueMask(mask=mask, downsample=downsample, thumbnail=thumb, threshold=threshold)
