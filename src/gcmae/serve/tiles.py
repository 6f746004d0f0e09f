"""Deep-zoom (DZI) tiles of the real slides: OpenSlide's DeepZoomGenerator over every format the tiler reads.

Slide formats go through OpenSlide; plain images (PNG, JPEG, TIFFs OpenSlide cannot open) through
``openslide.ImageSlide``, as :func:`gcmae.slide.reader.open_slide` does. Encoded tiles are kept in an LRU cache
shared by all slides, so panning back over a region costs a dictionary lookup.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import openslide
from openslide.deepzoom import DeepZoomGenerator

from gcmae.slide.reader import PLAIN_IMAGE_EXTENSIONS

TILE_SIZE = 254  # + 2 x overlap = 256 px per tile as sent
OVERLAP = 1
JPEG_QUALITY = 85


class TileNotFound(LookupError):
    """A level, column or row outside the slide's pyramid."""


class LRUCache:
    """A thread-safe least-recently-used map of at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def open_any(path: Path) -> openslide.AbstractSlide:
    """OpenSlide for slide formats, ImageSlide for plain images; FileNotFoundError / ValueError otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        if path.suffix.lower() not in PLAIN_IMAGE_EXTENSIONS:
            raise ValueError(f"cannot open slide {path.name}: {err}") from err
    try:
        return openslide.ImageSlide(str(path))
    except OSError as err:
        raise ValueError(f"cannot open image {path.name}: {err}") from err


class DeepZoomSource:
    """DZI descriptors and JPEG tiles of slide files, one open handle per file, tiles cached (LRU)."""

    def __init__(self, cache_tiles: int = 4096) -> None:
        self.cache = LRUCache(cache_tiles)
        # keyed by (path, mtime): a slide file replaced in place gets a new handle and new tiles
        self._generators: dict[tuple[Path, int], tuple[openslide.AbstractSlide, DeepZoomGenerator]] = {}
        self._lock = threading.Lock()

    def _key(self, path: Path) -> tuple[Path, int]:
        return path, path.stat().st_mtime_ns

    def _handle(self, key: tuple[Path, int]) -> tuple[openslide.AbstractSlide, DeepZoomGenerator]:
        with self._lock:
            if key not in self._generators:
                slide = open_any(key[0])
                self._generators[key] = (slide, DeepZoomGenerator(slide, tile_size=TILE_SIZE, overlap=OVERLAP,
                                                                   limit_bounds=False))
            return self._generators[key]

    def generator(self, path: Path) -> DeepZoomGenerator:
        return self._handle(self._key(path))[1]

    def dzi(self, path: Path) -> str:
        """The DZI XML descriptor of the slide."""
        return self.generator(path).get_dzi("jpeg")

    def tile(self, path: Path, level: int, col: int, row: int) -> bytes:
        """JPEG bytes of one tile; TileNotFound outside the pyramid."""
        file_key = self._key(path)
        key = (*file_key, level, col, row)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        slide, gen = self._handle(file_key)
        if not 0 <= level < gen.level_count:
            raise TileNotFound(f"level {level} (the slide has {gen.level_count})")
        cols, rows = gen.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"tile {col}_{row} of level {level} (it has {cols} x {rows})")
        if isinstance(slide, openslide.ImageSlide):
            with self._lock:  # one PIL image shared by the request threads (its lazy load is not thread-safe)
                image = gen.get_tile(level, (col, row))
        else:
            image = gen.get_tile(level, (col, row))  # OpenSlide reads are thread-safe
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        data = buf.getvalue()
        self.cache.put(key, data)
        return data

    def close(self) -> None:
        with self._lock:
            for slide, _ in self._generators.values():
                slide.close()
            self._generators.clear()
