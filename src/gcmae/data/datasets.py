"""Image folders that return (image, label, index), with up-front validation of the files."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class EmptyDatasetError(ValueError):
    """A folder holds no usable images."""


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def check_image(path: Path, decode: bool) -> str | None:
    """None if `path` opens (and, with `decode`, fully decodes) as an image, else the reason it does not."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            if img.width < 1 or img.height < 1:
                return "image has no pixels"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


class ImageFolderDataset(Dataset):
    """Every image under `root`; labels from the first-level sub-folder names when all images are in one.

    Unlabelled folders give label -1. Files that fail validation ("header": open every file, "full": decode every
    file) are excluded before indices are assigned, so memory-bank indices always match the images trained on;
    they are listed in `self.rejected`.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, validate: str = "header") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        files = find_images(self.root)
        self.rejected: list[tuple[Path, str]] = []
        if validate != "none":
            good = []
            for f in files:
                reason = check_image(f, decode=validate == "full")
                (self.rejected.append((f, reason)) if reason else good.append(f))
            files = good
        for path, reason in self.rejected:
            log.warning("skipping unreadable image %s: %s", path, reason)
        if not files:
            detail = f"; {len(self.rejected)} file(s) could not be read" if self.rejected else ""
            raise EmptyDatasetError(
                f"no usable images in {self.root} (looked for {' '.join(IMAGE_EXTENSIONS)}){detail}"
            )
        self.files = files
        self.transform = transform
        top = [f.relative_to(self.root).parts for f in files]
        if all(len(parts) > 1 for parts in top):
            self.classes = sorted({parts[0] for parts in top})
            lookup = {c: i for i, c in enumerate(self.classes)}
            self.labels = [lookup[parts[0]] for parts in top]
        else:
            self.classes, self.labels = [], [-1] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as err:
            raise OSError(f"cannot read image {path}: {err}") from err

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        img = self.load(index)
        if self.transform is not None:
            if sample_seed is None:
                img = self.transform(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed)
                    img = self.transform(img)
        return img, self.labels[index], index
