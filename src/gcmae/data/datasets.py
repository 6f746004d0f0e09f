"""Image folders that return (image, label, index), with up-front validation of the files."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from gcmae.data.validation import IMAGE_EXTENSIONS, READ_ERRORS, check_image, find_images, inspect_image, to_rgb
from gcmae.io.atomic import write_text_atomic

__all__ = ["EmptyDatasetError", "IMAGE_EXTENSIONS", "ImageFolderDataset", "check_image", "find_images"]

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 8  # consecutive unreadable files tried before __getitem__ gives up
MAX_NAMED_WARNINGS = 20  # usable-but-odd files named in the log (all of them in warned_images.txt)


class EmptyDatasetError(ValueError):
    """A folder holds no usable images."""


class ImageFolderDataset(Dataset):
    """Every image under `root`; labels from the first-level sub-folder names when all images are in one.

    Unlabelled folders give label -1. Files that fail validation ("header": open every file, "full": decode every
    file) are excluded before indices are assigned, so memory-bank indices always match the images trained on;
    they are listed in `self.rejected`, and usable-but-odd files (grayscale, 16-bit, alpha, wrong extension) in
    `self.warnings`. A file that becomes unreadable later (deleted, truncated mid-run) is replaced in
    `__getitem__` by the next readable index, deterministically; each replacement is logged and recorded in
    `self.replaced` (per process: DataLoader workers keep their own list).

    With `unreadable="exclude"` (evaluation: scoring a neighbour twice would change what is evaluated) such a file
    is never replaced: `__getitem__` returns a blank placeholder with the index `-1 - index`, which
    `gcmae.encoders.embed.extract_features` drops and reports.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, validate: str = "header",
                 unreadable: str = "replace") -> None:
        if unreadable not in ("replace", "exclude"):
            raise ValueError(f"unreadable must be 'replace' or 'exclude', got {unreadable!r}")
        self.unreadable = unreadable
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        files = find_images(self.root)
        self.rejected: list[tuple[Path, str]] = []
        self.warnings: list[tuple[Path, str]] = []
        self.replaced: list[tuple[Path, str]] = []
        if validate != "none":
            good = []
            for f in files:
                check = inspect_image(f, decode=validate == "full")
                if check.error:
                    self.rejected.append((f, check.error))
                    continue
                good.append(f)
                if check.warnings:
                    self.warnings.append((f, "; ".join(check.warnings)))
            files = good
        for path, reason in self.rejected:
            log.warning("skipping unreadable image %s: %s", path, reason)
        for path, reason in self.warnings[:MAX_NAMED_WARNINGS]:
            log.warning("usable with a warning: %s: %s", path, reason)
        if len(self.warnings) > MAX_NAMED_WARNINGS:
            log.warning("... and %d more image(s) with warnings (all listed by write_report, warned_images.txt)",
                        len(self.warnings) - MAX_NAMED_WARNINGS)
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

    def report(self) -> dict[str, int]:
        """Counts for the run summary: usable images, rejected files, files with warnings."""
        return {"images": len(self.files), "rejected": len(self.rejected), "warnings": len(self.warnings)}

    def write_report(self, path: str | Path) -> Path:
        """Write `report()` as JSON (atomically), and the files with warnings by name, one `path<TAB>warning` a
        line, in `warned_images.txt` beside it (removed when there are none)."""
        warned = Path(path).with_name("warned_images.txt")
        if self.warnings:
            write_text_atomic(warned, "".join(f"{f}\t{reason}\n" for f, reason in self.warnings))
        else:
            warned.unlink(missing_ok=True)
        return write_text_atomic(path, json.dumps(self.report(), indent=2) + "\n")

    def load(self, index: int) -> Image.Image:
        """The image at `index` as 8-bit RGB; OSError naming the file if it cannot be read."""
        path = self.files[index]
        try:
            with Image.open(path) as img:
                return to_rgb(img)
        except READ_ERRORS as err:
            raise OSError(f"cannot read image {path}: {err}") from err

    def _load_or_replace(self, index: int) -> tuple[Image.Image, int]:
        """The image at `index`, or at the next readable index when it cannot be read (bounded retries)."""
        errors = []
        for step in range(min(MAX_REPLACEMENTS, len(self) - 1) + 1):
            i = (index + step) % len(self)
            try:
                img = self.load(i)
            except OSError as err:
                errors.append(str(err))
                self.replaced.append((self.files[i], str(err)))
                log.warning("%s; replacing sample %d by sample %d (%s)", err, i, (i + 1) % len(self),
                            self.files[(i + 1) % len(self)])
                continue
            return img, i
        raise OSError(f"{len(errors)} consecutive images from index {index} are unreadable; last: {errors[-1]}")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, int]:
        """(image, label, index); `key` may be (index, sample_seed) for a reproducible random transform.

        When the file at `index` is unreadable the returned triple is that of its replacement (its own label and
        index), transformed under the same sample seed.
        """
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        if self.unreadable == "exclude":
            try:
                img = self.load(index)
            except OSError as err:
                log.warning("%s; excluded (not replaced)", err)
                img, index = Image.new("RGB", (1, 1)), -1 - index
        else:
            img, index = self._load_or_replace(index)
        if self.transform is not None:
            if sample_seed is None:
                img = self.transform(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed)
                    img = self.transform(img)
        return img, self.labels[index if index >= 0 else -1 - index], index
