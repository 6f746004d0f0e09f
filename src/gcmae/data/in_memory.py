"""A whole image folder decoded once into one uint8 tensor, so an epoch costs no JPEG/PNG decoding.

PCam's 19,171 train patches are 530 MB as (N, 3, 96, 96) uint8. The decoded tensor is cached as an ``.npy`` next to
a JSON sidecar under a key that hashes the folder's file list (names, sizes, modification times) and the stored
size, so an edited folder is decoded again and never served stale. Random augmentation then runs on whole batches
of tensors (`gcmae.data.batch_augment`), on the device that trains. With a stain normaliser the decoded tensor is
normalised once too (`stain_normalize_images`), cached under the same key plus the normaliser's id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from gcmae.data.datasets import ImageFolderDataset
from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.stain.normalizer import StainNormalizer

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gcmae, or ~/.cache/gcmae."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gcmae"


def _folder_key(files: list[Path], root: Path, size: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={size}\n".encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _decode(img: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 (3, size, size): the short side resized to `size` (bicubic), centre-cropped; untouched if it fits."""
    if img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _load_cached(cache: Path | None, shape: tuple[int, ...], what: str) -> torch.Tensor | None:
    """The uint8 array at `cache` when it exists and has `shape`, else None (a mismatch or bad file is logged)."""
    if cache is None or not cache.exists():
        return None
    try:
        array = np.load(cache, allow_pickle=False)
        if array.shape == shape and array.dtype == np.uint8:
            log.info("%s read from %s", what, cache)
            return torch.from_numpy(array)
        log.warning("ignoring %s: shape %s does not match %s", cache, array.shape, shape)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable image cache %s: %s", cache, err)
    return None


def _save_cached(cache: Path, array: np.ndarray, sidecar: dict) -> None:
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    write_text_atomic(cache.with_suffix(".json"), json.dumps(sidecar) + "\n")


def decode_folder(folder: ImageFolderDataset, size: int, cache_dir: str | Path | None = None,
                  progress: bool = True) -> torch.Tensor:
    """(N, 3, size, size) uint8 of every image of `folder`, in its order; read from / written to `cache_dir`.

    A file that fails to decode here is an error naming it: a training set must not shift under the memory bank.
    """
    files = folder.files
    cache = Path(cache_dir) / f"images-{_folder_key(files, folder.root, size)}.npy" if cache_dir else None
    cached = _load_cached(cache, (len(files), 3, size, size), f"decoded images of {folder.root}")
    if cached is not None:
        return cached
    array = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i in tqdm(range(len(files)), desc=f"decoding {folder.root.name}", disable=not progress, mininterval=5):
        array[i] = _decode(folder.load(i), size)
    if cache is not None:
        _save_cached(cache, array, {"root": str(folder.root.resolve()), "images": len(files), "size": size})
    return torch.from_numpy(array)


def stain_normalize_images(images: torch.Tensor, normalizer: StainNormalizer, cache: Path | None = None,
                           progress: bool = True, chunk: int = 512) -> tuple[torch.Tensor, int]:
    """(N, 3, S, S) uint8 images stain-normalised by `normalizer`, and how many were passed through unchanged
    (too little tissue, or a stain that cannot be estimated); read from / written to `cache` when given.

    The pass-through count is stored in the cache's JSON sidecar, so a cached result reports it too.
    """
    cached = _load_cached(cache, tuple(images.shape), f"images normalised by {normalizer.id}")
    if cached is not None:
        try:
            sidecar = json.loads(cache.with_suffix(".json").read_text())
            made_by = {k: sidecar["stain"].get(k) for k in ("id", "library")}
            wanted = {k: normalizer.to_dict()[k] for k in ("id", "library")}
            if made_by == wanted:
                return cached, int(sidecar["unchanged"])
            log.warning("ignoring %s: made by %s, not %s", cache, made_by["library"], wanted["library"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring %s: its sidecar does not say which normaliser made it or how many passed", cache)
    out = torch.empty_like(images)
    unchanged = 0
    for start in tqdm(range(0, images.shape[0], chunk), desc=f"stain-normalising ({normalizer.id})",
                      disable=not progress, mininterval=5):
        batch = normalizer.normalize(images[start : start + chunk])
        out[start : start + chunk] = batch.images
        unchanged += batch.num_failed
    if cache is not None:
        _save_cached(cache, out.numpy(), {"images": int(images.shape[0]), "stain": normalizer.to_dict(),
                                          "unchanged": unchanged})
    return out, unchanged


class TensorImageDataset(Dataset):
    """(uint8 image (3, size, size), label, index) for every usable image under `root`, decoded once.

    Discovery, validation, labels and reports are `ImageFolderDataset`'s, so indices match a file-backed run.
    Accepts the `(index, sample_seed)` keys of `SeededEpochSampler`; the seed is unused, because the random
    transform runs later on whole batches (`gcmae.data.batch_augment.BatchAugment`), seeded per step.
    With `stain`, every image is stain-normalised once; `stain_unchanged` counts those passed through as they were.
    """

    def __init__(self, root: str | Path, size: int, cache_dir: str | Path | None = None, validate: str = "header",
                 progress: bool = True, stain: StainNormalizer | None = None) -> None:
        self.folder = ImageFolderDataset(root, validate=validate)
        self.images = decode_folder(self.folder, size, cache_dir, progress)
        self.stain, self.stain_unchanged = stain, 0
        if stain is not None:
            cache = None
            if cache_dir:
                key = _folder_key(self.folder.files, self.folder.root, size)
                cache = Path(cache_dir) / f"images-{key}-{stain.id}.npy"
            self.images, self.stain_unchanged = stain_normalize_images(self.images, stain, cache, progress)
            log.info("%s: %d of %d images stain-normalised (%s), %d passed through unchanged", root,
                     len(self.images) - self.stain_unchanged, len(self.images), stain.id, self.stain_unchanged)
        self.labels = torch.tensor(self.folder.labels)
        self.root, self.files, self.classes = self.folder.root, self.folder.files, self.folder.classes
        self.rejected, self.warnings = self.folder.rejected, self.folder.warnings

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index = key[0] if isinstance(key, tuple) else key
        return self.images[index], int(self.labels[index]), index

    def load(self, index: int) -> Image.Image:
        """The image as training sees it before augmentation: the file, or its stain-normalised version."""
        if self.stain is None:
            return self.folder.load(index)
        return Image.fromarray(self.images[index].permute(1, 2, 0).numpy())

    def report(self) -> dict[str, int]:
        return self.folder.report()

    def write_report(self, path: str | Path) -> Path:
        return self.folder.write_report(path)
