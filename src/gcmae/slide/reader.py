"""Uniform read access to whole-slide images (OpenSlide) and plain images (PIL).

``open_slide(path)`` returns a :class:`SlideReader`. Slide formats (SVS, NDPI, MRXS,
tiled TIFF, ...) go through OpenSlide; plain raster images (PNG/JPEG and TIFFs that
OpenSlide cannot open) fall back to PIL and are presented as a one-level pyramid
without MPP. Anything unreadable raises :class:`SlideReadError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType

import openslide
from PIL import Image, UnidentifiedImageError

# Extensions that may be plain raster images: OpenSlide is tried first, then PIL.
PLAIN_IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
# Relative tolerance when matching a requested downsample to a pyramid level
# (pyramids are rarely exact powers of two: e.g. 2.0005 for a "2x" level).
_LEVEL_TOLERANCE = 1e-3


class SlideReadError(ValueError):
    """A file could not be opened or read as a slide/image; the message names the file."""


def _to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite an RGBA/LA/P image onto ``background`` and return RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        out = Image.new("RGB", image.size, background)
        out.paste(image, mask=image.getchannel("A"))
        return out
    return image.convert("RGB")


def _parse_hex_color(value: str | None) -> tuple[int, int, int]:
    """Parse an OpenSlide ``background-color`` property (``RRGGBB``); white if absent/bad."""
    if not value or len(value) != 6:
        return (255, 255, 255)
    try:
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    except ValueError:
        return (255, 255, 255)


def _positive_float(value: str | None) -> float | None:
    """A metadata property as a finite positive float, else None."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number > 0 else None


class SlideReader:
    """Common interface; use :func:`open_slide` to obtain one."""

    path: Path

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 size ``(width, height)`` in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        raise NotImplementedError

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        raise NotImplementedError

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel (``openslide.mpp-x``), or None when unknown."""
        raise NotImplementedError

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification of level 0 (``openslide.objective-power``, e.g. 20 or 40), or None."""
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """Read ``size`` (w, h) pixels at ``level`` whose top-left is ``location`` in level-0
        coordinates. Areas outside the image are background (white). Returns RGB."""
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> Image.Image:
        """RGB image of the whole slide fitting in ``max_size`` x ``max_size`` (aspect kept,
        never upscaled)."""
        raise NotImplementedError

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample is <= ``downsample`` (0.1% tolerance), i.e. the
        cheapest level to read that still needs no upsampling."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + _LEVEL_TOLERANCE):
                best = i
        return best

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, dimensions={self.dimensions}, mpp={self.mpp})"


class OpenSlideReader(SlideReader):
    """Reader backed by ``openslide.OpenSlide``."""

    def __init__(self, path: Path, slide: openslide.OpenSlide) -> None:
        self.path = path
        self._slide = slide
        self._background = _parse_hex_color(slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def mpp(self) -> float | None:
        return _positive_float(self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X))

    @property
    def objective_power(self) -> float | None:
        return _positive_float(self._slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    def _read_error(self, exc: Exception) -> SlideReadError:
        return SlideReadError(f"cannot read slide {self.path.name}: corrupt or unreadable image data ({exc})")

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        try:
            region = self._slide.read_region((int(location[0]), int(location[1])), int(level), size)
        except openslide.OpenSlideError as exc:
            raise self._read_error(exc) from exc
        return _to_rgb(region, self._background)

    def thumbnail(self, max_size: int) -> Image.Image:
        try:
            thumb = self._slide.get_thumbnail((int(max_size), int(max_size)))
        except openslide.OpenSlideError as exc:
            raise self._read_error(exc) from exc
        return _to_rgb(thumb, self._background)

    def close(self) -> None:
        self._slide.close()


class ImageReader(SlideReader):
    """Reader for plain raster images (one level, no MPP), fully loaded in memory."""

    def __init__(self, path: Path, image: Image.Image) -> None:
        self.path = path
        self._image = _to_rgb(image)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self._image.size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def mpp(self) -> float | None:
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        if level != 0:
            raise ValueError(f"{self.path.name} has a single level; got level={level}")
        x, y, w, h = int(location[0]), int(location[1]), int(size[0]), int(size[1])
        out = Image.new("RGB", (w, h), (255, 255, 255))
        img_w, img_h = self._image.size
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, img_w), min(y + h, img_h)
        if x1 > x0 and y1 > y0:
            out.paste(self._image.crop((x0, y0, x1, y1)), (x0 - x, y0 - y))
        return out

    def thumbnail(self, max_size: int) -> Image.Image:
        thumb = self._image.copy()
        thumb.thumbnail((int(max_size), int(max_size)), Image.Resampling.LANCZOS)
        return thumb

    def close(self) -> None:
        self._image.close()


def open_slide(path: str | Path) -> SlideReader:
    """Open ``path`` as a slide (OpenSlide) or, for plain image extensions, a PIL image.

    Raises FileNotFoundError if the file does not exist and :class:`SlideReadError`
    if it is not a supported slide/image or is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")
    try:
        return OpenSlideReader(path, openslide.OpenSlide(str(path)))
    except openslide.OpenSlideError as exc:
        slide_error: Exception = exc
    if path.suffix.lower() not in PLAIN_IMAGE_EXTENSIONS:
        raise SlideReadError(
            f"cannot open slide {path.name}: not a supported slide format or corrupt ({slide_error})"
        )
    try:
        with Image.open(path) as image:
            image.load()
            return ImageReader(path, image.copy())
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise SlideReadError(
            f"cannot open image {path.name}: not a supported slide/image format or corrupt "
            f"(OpenSlide: {slide_error}; PIL: {exc})"
        ) from exc
