"""Frozen-encoder features of an image folder, cached on disk under a key of everything that determines them.

``folder_features`` returns the features of every usable image of a folder, from ``<cache_dir>/<key>.npz`` when
present. The key hashes the weights' identity (the checkpoint's SHA-256, or the random-init seed), the folder's
file list with sizes and modification times, the transform parameters, the pooling and the image size, so a
changed checkpoint or folder never reuses stale features.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.folders import open_folder
from gcmae.data.transforms import eval_transform
from gcmae.encoders.embed import extract_features
from gcmae.encoders.loading import POOLS, Encoder
from gcmae.io.arrays import ArrayFileError, load_array_file
from gcmae.io.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cached content or its meaning changes
_CACHE_ARRAYS = {"features": (2, "f"), "labels": (1, "iu"), "classes": (1, "U"), "files": (1, "U")}


@dataclass
class FeatureSet:
    """Features (N, D) and labels (N,) of a folder, in the folder's sorted file order."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]  # relative to the folder
    root: Path
    cache_path: Path | None = None
    from_cache: bool = False
    stain_failed: int | None = None  # images passed through without stain normalisation (None: no normaliser)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): rejected or unreadable, not in `files`


def feature_key(encoder: Encoder, dataset: ImageFolderDataset, pool: str) -> str:
    """SHA-256 of (weights identity, file list with sizes and mtimes, transform, pool, image size)."""
    listing = []
    for f in dataset.files:
        stat = f.stat()
        listing.append([str(f.relative_to(dataset.root)), stat.st_size, stat.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "weights": encoder.identity, "files": listing,
               "transform": encoder.transform_params, "pool": pool, "img_size": encoder.img_size}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached_manifest(path: Path) -> dict[str, Any]:
    """The JSON manifest written beside a feature cache ({} when missing or unreadable)."""
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _cached_excluded(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The unreadable files the cache manifest recorded (excluded from its arrays)."""
    try:
        return [(str(f), str(r)) for f, r in manifest.get("excluded", [])]
    except (ValueError, TypeError):
        return []


def _read_cache(path: Path, files: list[str], excluded: list[tuple[str, str]]) -> dict[str, np.ndarray] | None:
    try:
        arrays = load_array_file(path, _CACHE_ARRAYS)
    except ArrayFileError as err:
        log.warning("ignoring unreadable feature cache (will recompute): %s", err)
        return None
    skip = {f for f, _ in excluded}
    kept = [f for f in files if f not in skip]
    if arrays["files"].tolist() != kept or len(arrays["features"]) != len(kept):
        log.warning("feature cache %s does not match the folder's files; recomputing", path)
        return None
    return arrays


def _write_cache(path: Path, fs: FeatureSet, manifest: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=fs.features.numpy(), labels=fs.labels.numpy(),
                 classes=np.array(fs.classes, dtype=str), files=np.array(fs.files, dtype=str))
    write_text_atomic(path.with_suffix(".json"), json.dumps(manifest, indent=2) + "\n")


def folder_features(
    encoder: Encoder, folder: str | Path | ImageFolderDataset, pool: str = "cls", cache_dir: str | Path | None = None,
    batch_size: int = 128, num_workers: int = 0, device: str | torch.device = "cpu", labelled: bool = True,
) -> FeatureSet:
    """Features of every usable image under `folder` (cached in `cache_dir` when given).

    `folder` may be an already opened dataset; its transform is then replaced by the encoder's eval transform.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if isinstance(folder, ImageFolderDataset):
        dataset = folder
        dataset.transform = eval_transform(encoder.img_size, encoder.mean, encoder.std)
    else:
        dataset = open_folder(folder, encoder.img_size, encoder.mean, encoder.std, labelled)
    files = [str(f.relative_to(dataset.root)) for f in dataset.files]
    # rejected by validation (never indexed) + unreadable when embedded: both left out, both listed
    rejected = [(str(f.relative_to(dataset.root)), reason) for f, reason in dataset.rejected]
    cache_path = None
    if cache_dir:
        cache_path = Path(cache_dir) / f"{feature_key(encoder, dataset, pool)}.npz"
        manifest = _cached_manifest(cache_path) if cache_path.is_file() else {}
        excluded = _cached_excluded(manifest)
        if cache_path.is_file() and (arrays := _read_cache(cache_path, files, excluded)) is not None:
            log.info("features of %s from cache %s", dataset.root, cache_path)
            if excluded:
                log.warning("%s: %d unreadable image(s) excluded (as when the features were cached): %s",
                            dataset.root, len(excluded), ", ".join(f for f, _ in excluded))
            return FeatureSet(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["labels"]).long(),
                              arrays["classes"].tolist(), arrays["files"].tolist(), dataset.root, cache_path, True,
                              manifest.get("stain_failed") if encoder.stain else None, rejected + excluded)
    log.info("embedding %d images of %s (%s, pool %s)", len(dataset), dataset.root, encoder.description, pool)
    model = encoder.model.to(device)
    stain = encoder.stain_step()
    dropped: list[int] = []
    feats, labels = extract_features(model, dataset, pool, batch_size, num_workers, device, stain, dropped,
                                     progress=f"embedding {dataset.root.name}")
    excluded = [(files[i], _read_error(dataset, i)) for i in sorted(dropped)]
    skip = set(dropped)
    fs = FeatureSet(feats.float().contiguous(), labels.long(), list(dataset.classes),
                    [f for i, f in enumerate(files) if i not in skip], dataset.root, cache_path, False,
                    stain.failed if stain else None, rejected + excluded)
    if stain and stain.failed:
        log.warning("%s: %d of %d images passed through without stain normalisation (no stain estimate)",
                    dataset.root, stain.failed, stain.tiles)
    if cache_path is not None:
        manifest = {"folder": str(dataset.root), "weights": encoder.description, "pool": pool,
                    "transform": encoder.transform_params, "num_images": len(fs.files), "dim": feats.shape[1],
                    "stain_failed": fs.stain_failed, "excluded": [list(e) for e in excluded]}
        _write_cache(cache_path, fs, manifest)
    return fs


def _read_error(dataset: ImageFolderDataset, index: int) -> str:
    """Why the image at `index` could not be read (re-tried here: DataLoader workers keep their own logs)."""
    try:
        dataset.load(index)
    except OSError as err:
        return str(err.__cause__ or err)
    return "unreadable while embedding (readable again now)"
