"""Frozen-encoder features of an image folder, cached on disk under a key of everything that determines them.

``load_encoder`` builds the model to embed with: any file ``gcmae.io.convert.load_weights`` reads (our
checkpoints, official GCMAE/MAE checkpoints, timm state dicts, `gcmae export` folders) or ``"random"`` (a
seeded random initialisation of an encoder preset, the baseline). ``folder_features`` returns the features
of every usable image of a folder, from ``<cache_dir>/<key>.npz`` when present. The key hashes the checkpoint's
content (SHA-256), the folder's file list with sizes and modification times, the transform parameters, the
pooling and the image size, so a changed checkpoint or folder never reuses stale features.
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

from gcmae.config import PATHOLOGY_MEAN, PATHOLOGY_STD
from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.transforms import eval_transform
from gcmae.evaluate.embed import extract_features
from gcmae.io.arrays import ArrayFileError, load_array_file
from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.io.convert import build_gcmae_from_weights, load_weights
from gcmae.models.gcmae import GCMAE
from gcmae.models.vit import ENCODER_PRESETS
from gcmae.pretrained import available as available_pretrained
from gcmae.pretrained import resolve as resolve_pretrained
from gcmae.stain import EncoderInputStain, StainNormalizer

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cached content or its meaning changes
POOLS = ("cls", "mean")
RANDOM = "random"
_EVAL_BANK_SIZE = 2  # GCMAE needs a memory bank; evaluation never uses it
_CACHE_ARRAYS = {"features": (2, "f"), "labels": (1, "iu"), "classes": (1, "U"), "files": (1, "U")}

Stats = tuple[float, float, float]


@dataclass
class Encoder:
    """A model to embed with, its input normalisation, and what identifies its weights (for cache keys)."""

    model: GCMAE
    mean: Stats
    std: Stats
    img_size: int
    identity: dict[str, Any]
    description: str
    has_decoder: bool = True
    stain: StainNormalizer | None = None  # applied to every batch before the model

    @property
    def transform_params(self) -> dict[str, Any]:
        """Everything the input pipeline depends on (part of the cache key): `eval_transform`, stain."""
        params = {"name": "resize_center_crop", "size": self.img_size, "interpolation": "bicubic",
                  "mean": list(self.mean), "std": list(self.std)}
        if self.stain is not None:
            params["stain"] = self.stain.to_dict()
        return params

    def stain_step(self) -> EncoderInputStain | None:
        """A per-run stain step for embedding loops (it counts the tiles passed through), or None."""
        return None if self.stain is None else EncoderInputStain(self.stain, self.mean, self.std)


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


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content; of every file (relative name + content) for a folder."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _random_encoder(encoder: str | None, img_size: int | None, patch_size: int | None, seed: int) -> Encoder:
    if encoder is None:
        raise ValueError(f"--checkpoint {RANDOM} needs --encoder (one of {', '.join(ENCODER_PRESETS)})")
    img_size, patch_size = img_size or 224, patch_size or 16
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GCMAE(num_data=_EVAL_BANK_SIZE, encoder=encoder, img_size=img_size, patch_size=patch_size)
    # the init depends on the RNG stream, hence on torch's version
    identity = {"random": True, "encoder": encoder, "patch_size": patch_size, "seed": seed, "torch": torch.__version__}
    desc = f"random init {encoder}/{patch_size} at {img_size} px (seed {seed})"
    return Encoder(model.eval(), PATHOLOGY_MEAN, PATHOLOGY_STD, img_size, identity, desc)


def load_encoder(
    checkpoint: str | Path, encoder: str | None = None, img_size: int | None = None, patch_size: int | None = None,
    seed: int = 0, sha256: str | None = None,
) -> Encoder:
    """The model of `checkpoint` (or a random init for "random"), in eval mode on the CPU.

    `sha256`: the checkpoint's digest when the caller already computed it (hashing a ViT-L file takes seconds).

    `encoder` / `patch_size`, when given, are expectations: a checkpoint with another architecture is an error.
    `img_size` defaults to the checkpoint's (position embeddings are interpolated for another size).
    """
    if encoder is not None and encoder not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    if str(checkpoint) == RANDOM:
        return _random_encoder(encoder, img_size, patch_size, seed)
    path = resolve_pretrained(checkpoint)  # a shipped encoder's name, e.g. "gcmae-vit-tiny-pcam", or a path
    if not path.exists():
        shipped = ", ".join(available_pretrained()) or "none"
        raise FileNotFoundError(f"checkpoint not found: {path} (nor the name of a shipped encoder: {shipped})")
    weights = load_weights(path)
    found = f"{weights.encoder} ({weights.embed_dim} wide, {weights.depth} blocks, patch {weights.patch_size})"
    if encoder is not None and encoder != weights.encoder:
        want = ENCODER_PRESETS[encoder]
        raise ValueError(f"{path} holds a {found} encoder, but --encoder {encoder} expects "
                         f"{want['embed_dim']} wide with {want['depth']} blocks")
    if patch_size is not None and patch_size != weights.patch_size:
        raise ValueError(f"{path} holds a {found} encoder, but --patch-size {patch_size} was asked for")
    model = build_gcmae_from_weights(weights, num_data=_EVAL_BANK_SIZE, img_size=img_size, load_bank=False)
    data = weights.config.get("data", {})
    mean = tuple(data.get("mean", PATHOLOGY_MEAN))
    std = tuple(data.get("std", PATHOLOGY_STD))
    size = img_size or weights.img_size
    identity = {"sha256": sha256 or file_digest(path), "patch_size": weights.patch_size}
    desc = f"{weights.kind} checkpoint {path} ({found}) at {size} px"
    return Encoder(model, mean, std, size, identity, desc, has_decoder=weights.decoder_state is not None)


class EmptyClassError(ValueError):
    """A class sub-folder of a labelled evaluation folder holds no usable image."""


def open_folder(folder: str | Path, img_size: int | None = None, mean: Stats = PATHOLOGY_MEAN,
                std: Stats = PATHOLOGY_STD, labelled: bool = True) -> ImageFolderDataset:
    """The validated image folder, with the evaluation transform when `img_size` is given; with `labelled`,
    class sub-folders are required, and one without a usable image is an error (dropping it would score the
    other classes as if it did not exist). Files unreadable at embedding time are excluded, never replaced."""
    dataset = ImageFolderDataset(folder, eval_transform(img_size, mean, std) if img_size else None,
                                 unreadable="exclude")
    if labelled and not dataset.classes:
        raise ValueError(f"{folder}: needs one sub-folder per class (images directly in the folder have no label)")
    if labelled:
        subdirs = sorted(d.name for d in dataset.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        empty = [d for d in subdirs if d not in dataset.classes]
        if empty:
            rejected = {p.relative_to(dataset.root).parts[0] for p, _ in dataset.rejected}
            detail = "; ".join(f"{d}/ ({'only unreadable files' if d in rejected else 'no images'})"
                               for d in empty)
            raise EmptyClassError(
                f"{folder}: class folder(s) without a usable image: {detail}. Add images, or remove the folder to "
                f"evaluate {len(dataset.classes)} classes ({', '.join(dataset.classes)})")
    return dataset


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
    feats, labels = extract_features(model, dataset, pool, batch_size, num_workers, device, stain, dropped)
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
