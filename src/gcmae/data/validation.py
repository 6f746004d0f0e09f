"""Image-file checks: why a file cannot be trained on, and what is odd (but usable) about one that can.

``inspect_image`` opens a file with PIL (and with ``decode`` decodes every pixel, so a truncated JPEG/PNG is
caught; PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never turned on here). Images larger than ``max_pixels``
are rejected from their header, before any pixel is allocated (decompression-bomb guard, independent of PIL's
global ``Image.MAX_IMAGE_PIXELS``). Grayscale, palette, alpha and 16-bit images are usable: ``to_rgb`` converts
them and the check reports a warning. ``scan_folder`` is what ``gcmae check-data`` runs.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 100_000_000  # 10k x 10k; tiles and patches are far smaller
_SUFFIX_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
                  ".webp": "WEBP"}
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale ("I" is how some readers return it)
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)  # what PIL raises on bad files


def find_images(root: Path) -> list[Path]:
    """Every file under `root` (recursive) with an image extension, sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one file: `error` (unusable, with the reason) or `warnings` (usable after conversion)."""

    path: Path
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "rejected" if self.error else "warning" if self.warnings else "ok"


def _mode_warning(img: Image.Image) -> str | None:
    mode = img.mode
    if mode == "RGB":
        return None
    if mode in _WIDE_GRAY:
        return f"16-bit grayscale ({mode}): scaled to 8 bits (value / 257) and converted to RGB"
    if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        return f"{mode} with transparency: composited onto white"
    names = {"L": "grayscale", "1": "1-bit", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr"}
    return f"{names.get(mode, 'mode')} ({mode}): converted to RGB"


def _header_warnings(path: Path, img: Image.Image) -> list[str]:
    notes = []
    expected = _SUFFIX_FORMAT.get(path.suffix.lower())
    if img.format and expected and img.format != expected:
        notes.append(f"{img.format} data in a {path.suffix} file (read by content, fine)")
    mode_note = _mode_warning(img)
    if mode_note:
        notes.append(mode_note)
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"{frames} frames/pages: only the first is used")
    return notes


def _too_large(size: str, max_pixels: int | None) -> str:
    return f"image too large: {size} pixels > limit {max_pixels or 0:,} (decompression-bomb guard; not decoded)"


def inspect_image(path: str | Path, decode: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS) -> ImageCheck:
    """Check one file: open its header (size, mode, format) and, with `decode`, decode every pixel."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return ImageCheck(path, "empty file (0 bytes)")
    except OSError as err:
        return ImageCheck(path, f"cannot access file: {err.strerror or err}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width < 1 or height < 1:
                    return ImageCheck(path, "image has no pixels")
                if max_pixels and width * height > max_pixels:
                    return ImageCheck(path, _too_large(f"{width}x{height} = {width * height:,}", max_pixels))
                if img.mode == "F":
                    return ImageCheck(path, "32-bit floating-point pixels (mode F): no defined mapping to RGB")
                notes = _header_warnings(path, img)
                if decode:
                    img.load()
    except UnidentifiedImageError:
        return ImageCheck(path, "not an image: PIL does not recognise the file's content")
    except Image.DecompressionBombError as err:  # PIL's own limit fired first, while reading the header
        found = re.search(r"\((\d+) pixels\)", str(err))
        limit = max_pixels or 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return ImageCheck(path, _too_large(f"{int(found.group(1)):,}" if found else str(err), limit))
    except READ_ERRORS as err:
        what = "corrupt or truncated image data" if decode else "unreadable image header"
        return ImageCheck(path, f"{what}: {type(err).__name__}: {err}")
    return ImageCheck(path, None, tuple(notes))


def check_image(path: str | Path, decode: bool = True, max_pixels: int | None = MAX_IMAGE_PIXELS) -> str | None:
    """None if `path` is a usable image (warnings allowed), else the reason it is not."""
    return inspect_image(path, decode, max_pixels).error


def to_rgb(img: Image.Image) -> Image.Image:
    """A new 8-bit RGB image: 16-bit grayscale scaled by 1/257 (not clipped), transparency composited on white."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _WIDE_GRAY:
        values = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


@dataclass
class FolderReport:
    """Checks of every image file under a folder, plus the files ignored for their extension."""

    root: Path
    checks: list[ImageCheck] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def summary(self) -> str:
        return (f"{len(self.checks)} image file(s) in {self.root}: {self.count('ok')} ok, "
                f"{self.count('warning')} with warnings, {self.count('rejected')} rejected; "
                f"{len(self.ignored)} other file(s) ignored (not an image extension)")

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("path", "status", "reason"))
        for c in self.checks:
            writer.writerow((str(c.path), c.status, c.error or "; ".join(c.warnings)))
        return buf.getvalue()


def scan_folder(root: str | Path, decode: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS) -> FolderReport:
    """Check every image under `root` (header only, or every pixel with `decode`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    images = find_images(root)
    known = set(images)
    ignored = sorted(p for p in root.rglob("*") if p.is_file() and p not in known and not p.name.startswith("."))
    return FolderReport(root, [inspect_image(p, decode, max_pixels) for p in images], ignored)
