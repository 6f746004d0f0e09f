"""`gcmae extract`: frozen-encoder features of every tile of every tiled slide, read straight from the slides.

For each finished slide of a tiling job (``JOB_DIR/<slide>/coords.h5``) a :class:`TileDataset` reads the tiles
from the slide file through a torch ``DataLoader`` (each worker process opens the slide once, lazily), the frozen
encoder embeds them, and ``JOB_DIR/<slide>/features_<tag>.h5`` is written atomically (layout in
``gcmae.slide.bags``). Re-runs skip slides whose feature file is complete and matches (same weights, pool, image
size and tile list); a slide whose reading fails is listed in ``JOB_DIR/extract_failures.csv`` and skipped.
Several processes share the slides: ``shard=(i, n)`` (or ``RANK`` / ``WORLD_SIZE`` from the environment) gives
process i every n-th slide, and a lock file per slide makes sure no two processes ever embed the same slide.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gcmae import __version__
from gcmae.data.transforms import eval_transform
from gcmae.encoders.embed import embed
from gcmae.encoders.loading import POOLS, RANDOM, Encoder, load_encoder
from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.io.paths import claim, lock_owner, safe_name, sweep_dead_claimers
from gcmae.io.shared_csv import rewrite_shared_csv
from gcmae.models.vit import ENCODER_PRESETS
from gcmae.pretrained import is_pretrained_name
from gcmae.pretrained import resolve as resolve_pretrained
from gcmae.slide.bags import FORMAT, FORMAT_VERSION, array_digest, feature_filename, is_complete_features, write_attrs
from gcmae.slide.coords import COORDS_FILENAME, CoordsFileError, SlideTiles, TileGrid, read_coords_h5
from gcmae.slide.reader import SlideReader, SlideReadError, open_slide
from gcmae.slide.tiling import read_tile
from gcmae.stain import EncoderInputStain, StainNormalizer

log = logging.getLogger(__name__)

FAILURES_FILENAME = "extract_failures.csv"
PRECISIONS = ("fp32", "bf16")
Stats = tuple[float, float, float]


# ------------------------------------------------------------------------------------------ encoder identity
def encoder_record(encoder: Encoder, checkpoint: str | Path, pool: str, img_size_given: bool = False) -> dict[str, Any]:
    """What identifies the features an encoder makes: weights id (SHA-256 of the checkpoint, or of a random
    init's recipe), checkpoint path, architecture, image size, pool, normalisation, the stain normaliser when the
    encoder has one (``stain``: its `to_dict`, ``stain_id``; also in the tag), and the file-name tag."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    enc = encoder.model
    dim, depth = int(enc.embed_dim), len(enc.blocks)
    preset = next((n for n, p in ENCODER_PRESETS.items() if p["embed_dim"] == dim and p["depth"] == depth), "custom")
    ident = encoder.identity
    if ident.get("random"):
        recipe = {**ident, "img_size": encoder.img_size}  # the size is part of the recipe: other features
        weights_id = "random-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        stem, ckpt, digest = f"random-{preset}", RANDOM, None
    else:
        weights_id, stem = ident["sha256"], Path(checkpoint).name.split(".")[0]
        # a shipped encoder is recorded by its name (it lives inside the package, wherever that is installed)
        ckpt = str(checkpoint) if is_pretrained_name(checkpoint) else str(Path(checkpoint).resolve())
        digest = ident["sha256"]
    short = weights_id.removeprefix("random-")[:8]
    stain = encoder.stain
    tag = safe_name(f"{stem}-{short}-{pool}" + (f"-{encoder.img_size}px" if img_size_given else "")
                    + (f"-{stain.id}" if stain else ""))
    return {"weights_id": weights_id, "checkpoint": ckpt, "checkpoint_sha256": digest, "encoder": preset,
            "patch_size": int(ident["patch_size"]), "img_size": int(encoder.img_size), "pool": pool,
            "feature_dim": dim, "mean": list(encoder.mean), "std": list(encoder.std),
            "seed": ident.get("seed"), "encoder_description": encoder.description, "tag": tag,
            "stain": stain.to_dict() if stain else None, "stain_id": stain.id if stain else None}


def stain_from_record(record: dict[str, Any]) -> StainNormalizer | None:
    """The stain normaliser a record (or a feature file's attributes, where it is JSON) stores; None for none."""
    stored = record.get("stain")
    if not stored:
        return None
    stain = StainNormalizer.from_dict(stored)
    if record.get("stain_id") is not None and not stain.matches_id(record["stain_id"]):
        raise ValueError(f"recorded stain_id {record.get('stain_id')} does not match the stored normaliser "
                         f"({stain.id})")
    return stain


def load_recorded_encoder(record: dict[str, Any]) -> Encoder:
    """The encoder a record describes; a clear error when the checkpoint is gone or its content changed."""
    if record.get("checkpoint") == RANDOM:
        encoder = load_encoder(RANDOM, record["encoder"], record["img_size"], record["patch_size"], record["seed"])
    else:
        path = resolve_pretrained(record["checkpoint"])  # a path, or a shipped encoder's name
        if not path.exists():
            raise FileNotFoundError(f"encoder checkpoint {path} (recorded by the model) not found")
        encoder = load_encoder(path, img_size=record["img_size"])
    encoder.stain = stain_from_record(record)  # extraction applies exactly what training applied
    found = encoder_record(encoder, record["checkpoint"], record["pool"])["weights_id"]
    if found != record["weights_id"]:
        raise ValueError(f"encoder checkpoint {record['checkpoint']} has changed since the model was trained: "
                         f"digest {found[:16]}… != recorded {record['weights_id'][:16]}…")
    return encoder


# ---------------------------------------------------------------------------------------------- tile reading
class TileDataset(Dataset):
    """The tiles of one slide as normalised tensors, read from the slide file (opened lazily, once per process).

    Tile i is `gcmae.slide.tiling.read_tile` at ``coords[i]`` (``read_size`` px at ``grid.level``, Lanczos-resized
    to ``tile_size``, exactly as `gcmae tile --export-png` writes it), then the encoder's evaluation transform
    (bicubic resize to ``img_size``, normalise).
    """

    def __init__(self, slide_path: str | Path, coords: np.ndarray, grid: TileGrid, img_size: int, mean: Stats,
                 std: Stats) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.grid = grid
        self.transform = eval_transform(img_size, mean, std)
        self._reader: SlideReader | None = None

    @classmethod
    def from_tiles(cls, tiles: SlideTiles, encoder: Encoder, slide_path: Path | None = None) -> TileDataset:
        return cls(slide_path or tiles.slide_path, tiles.coords, tiles.grid, encoder.img_size, encoder.mean,
                   encoder.std)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}  # each worker opens its own handle

    def read_tile(self, i: int) -> Image.Image:
        if self._reader is None:
            self._reader = open_slide(self.slide_path)
        x, y = self.coords[i]
        return read_tile(self._reader, self.grid, int(x), int(y))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.read_tile(i)), i

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def tile_loader(dataset: TileDataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None)


# -------------------------------------------------------------------------------------------- one slide
def input_geometry(grid: TileGrid, img_size: int) -> dict[str, Any]:
    """What the encoder sees: tiles of `grid.tile_size` px resized to `img_size` px, so at `input_mpp` µm/px
    (None when the tiles' MPP is unknown); `resized_from` is the tile size when it differs from `img_size`."""
    scale = grid.tile_size / img_size
    return {"input_mpp": None if grid.mpp is None else grid.mpp * scale,
            "resized_from": grid.tile_size if grid.tile_size != img_size else None}


def resize_warning(grid: TileGrid, img_size: int) -> str | None:
    """The warning for tiles that the encoder's transform resizes to another size (None when it does not)."""
    if grid.tile_size == img_size:
        return None
    at = "" if grid.mpp is None else f" at {grid.mpp:g} µm/px"
    sees = "" if grid.mpp is None else f", so the encoder sees {grid.mpp * grid.tile_size / img_size:.3g} µm/px"
    return (f"tiles of {grid.tile_size} px{at} are resized to the encoder's {img_size} px input{sees}; tile at "
            f"--tile-size {img_size} (and the --mpp you want the encoder to see), or give --img-size "
            f"{grid.tile_size}; recorded as resized_from / input_mpp in the feature files")


def _slide_attrs(tiles: SlideTiles, slide_path: Path, record: dict[str, Any]) -> dict[str, Any]:
    g = tiles.grid
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "slide_name": tiles.name,
            "slide_path": str(slide_path), "width": tiles.dimensions[0], "height": tiles.dimensions[1],
            "slide_mpp": tiles.slide_mpp, "level": g.level, "read_size": g.read_size, "step": g.step,
            "extent": g.extent, "tile_size": g.tile_size, "tile_mpp": g.mpp, "num_tiles": len(tiles),
            "coords_sha256": array_digest(tiles.coords), **input_geometry(g, int(record["img_size"])), **record}


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast for precision 'bf16', else nothing; features are stored in float32 either way."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@torch.no_grad()
def embed_tiles(model: torch.nn.Module, loader: DataLoader, pool: str, device: torch.device, out: h5py.Dataset,
                precision: str = "fp32", desc: str = "", progress: bool = True,
                stain: EncoderInputStain | None = None) -> None:
    """Embed every batch of `loader` with `embed(model, images, pool)` into rows of `out` (in loader order);
    `stain` normalises each batch on `device` first (in fp32) and counts the tiles it passes through."""
    for imgs, idx in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        imgs = imgs.to(device, non_blocking=True)
        if stain is not None:
            imgs = stain(imgs)
        with autocast(device, precision):
            feats = embed(model, imgs, pool)
        out[int(idx[0]) : int(idx[-1]) + 1] = feats.float().cpu().numpy()


def extract_slide(tiles: SlideTiles, slide_path: Path, encoder: Encoder, record: dict[str, Any], out_path: Path,
                  batch_size: int = 64, num_workers: int = 2, device: torch.device | str = "cpu",
                  precision: str = "fp32", progress: bool = True) -> int:
    """Write `out_path` (features_<tag>.h5) for one slide; atomic: a failure leaves nothing behind. The stain
    normaliser is the record's (``record["stain"]``); returns how many tiles it passed through unchanged."""
    device = torch.device(device)
    if len(tiles):
        open_slide(slide_path).close()  # an unreadable slide fails here, before any worker starts
    model = encoder.model.to(device).eval()
    dataset = TileDataset.from_tiles(tiles, encoder, slide_path)
    attrs = {**_slide_attrs(tiles, slide_path, record), "precision": precision}
    normalizer = stain_from_record(record)
    stain = EncoderInputStain(normalizer, encoder.mean, encoder.std) if normalizer else None
    n, dim = len(tiles), record["feature_dim"]
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("coords", data=tiles.coords.astype(np.int64))
            feats = h5.create_dataset("features", shape=(n, dim), dtype=np.float32,
                                      chunks=(max(1, min(n, 1024)), dim) if n else None)
            write_attrs(h5, {**attrs, "complete": False})
            if n:
                try:
                    embed_tiles(model, tile_loader(dataset, batch_size, num_workers, device), record["pool"],
                                device, feats, precision, tiles.name, progress, stain)
                finally:
                    dataset.close()
            if stain is not None:
                write_attrs(h5, {"stain_failed_tiles": stain.failed})
            write_attrs(h5, {"complete": True,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "gcmae_version": __version__, "torch_version": torch.__version__})
    if stain is not None and stain.failed:
        log.warning("%s: %d of %d tiles passed through without stain normalisation (no stain estimate)",
                    tiles.name, stain.failed, n)
    return stain.failed if stain is not None else 0


# ---------------------------------------------------------------------------------------------- a whole job
@dataclass
class ExtractSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete
    busy: list[str] = field(default_factory=list)  # held by another process
    failures: list[tuple[str, str]] = field(default_factory=list)
    other_shards: int = 0
    tiles: int = 0
    stain_failed: int | None = None  # tiles embedded without stain normalisation (None: no normaliser)
    warnings: list[str] = field(default_factory=list)  # e.g. tiles resized to another encoder input size

    def __str__(self) -> str:
        stain = "" if self.stain_failed is None else (f", {self.stain_failed} tile(s) passed through without stain "
                                                      f"normalisation")
        return (f"{len(self.done)} slide(s) embedded ({self.tiles} tiles{stain}), {len(self.skipped)} already "
                f"done, {len(self.busy)} busy elsewhere, {len(self.failures)} failed, {self.other_shards} left to "
                f"other shards")


def parse_shard(shard: str | None) -> tuple[int, int]:
    """(index, count) from 'i/n', else from RANK / WORLD_SIZE in the environment, else (0, 1)."""
    if shard:
        try:
            i, n = (int(p) for p in shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    else:
        i, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard index {i} is not in 0..{n - 1}")
    return i, n


def tiled_slides(job_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Sorted slide folders of a tiling job that hold coords.h5; clear errors when there are none."""
    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        raise FileNotFoundError(f"job folder not found: {job_dir} (make it with gcmae tile SLIDES --out {job_dir})")
    slides = sorted(p for p in job_dir.iterdir() if (p / COORDS_FILENAME).is_file())
    if names:
        missing = sorted(set(names) - {p.name for p in slides})
        if missing:
            raise FileNotFoundError(f"{job_dir}: no tiled slide named {', '.join(missing)} "
                                    f"(tiled: {', '.join(p.name for p in slides) or 'none'})")
        slides = [p for p in slides if p.name in set(names)]
    if not slides:
        raise FileNotFoundError(f"no tiled slides in {job_dir}: no <slide>/{COORDS_FILENAME} "
                                f"(run gcmae tile SLIDES --out {job_dir} first)")
    return slides


def _slide_file(tiles: SlideTiles, slides_dir: Path | None) -> Path:
    if tiles.slide_path.is_file():
        return tiles.slide_path
    if slides_dir is not None and (slides_dir / tiles.slide_path.name).is_file():
        return slides_dir / tiles.slide_path.name
    raise FileNotFoundError(f"slide file not found: {tiles.slide_path} (moved? pass --slides-dir)")


READ_FAILURES = (SlideReadError, CoordsFileError, FileNotFoundError, OSError)


def extract_job(job_dir: str | Path, encoder: Encoder, record: dict[str, Any], batch_size: int = 64,
                num_workers: int = 2, device: str | torch.device = "cpu", shard: tuple[int, int] = (0, 1),
                names: Sequence[str] | None = None, slides_dir: str | Path | None = None, precision: str = "fp32",
                progress: bool = True) -> ExtractSummary:
    """Embed every tiled slide of `job_dir` of this shard that has no matching complete feature file."""
    job_dir, index, count = Path(job_dir), shard[0], shard[1]
    slides = tiled_slides(job_dir, names)
    mine = slides[index::count]
    summary = ExtractSummary(other_shards=len(slides) - len(mine),
                             stain_failed=0 if record.get("stain") else None)
    out_name = feature_filename(record["tag"])
    sweep_dead_claimers(job_dir)
    for slide_dir in tqdm(mine, desc="slides", unit="slide", disable=not progress or len(mine) < 2):
        out_path = slide_dir / out_name
        lock = slide_dir / f".{out_name}.lock"
        sweep_dead_claimers(slide_dir)
        with claim(lock) as held:
            if not held:
                log.warning("%s: being embedded by %s, skipping", slide_dir.name, lock_owner(lock))
                summary.busy.append(slide_dir.name)
                continue
            try:
                tiles = read_coords_h5(slide_dir / COORDS_FILENAME)
                expect = {"weights_id": record["weights_id"], "pool": record["pool"], "img_size": record["img_size"],
                          "coords_sha256": array_digest(tiles.coords), "num_tiles": len(tiles), "precision": precision,
                          "stain_id": record.get("stain_id")}
                if is_complete_features(out_path, expect):
                    summary.skipped.append(slide_dir.name)
                    continue
                if out_path.exists():
                    log.warning("%s: %s is unfinished or stale; recomputing", slide_dir.name, out_name)
                resized = resize_warning(tiles.grid, int(record["img_size"]))
                if resized and resized not in summary.warnings:  # once per tile geometry, not once per slide
                    log.warning("%s", resized)
                    summary.warnings.append(resized)
                failed = extract_slide(tiles, _slide_file(tiles, Path(slides_dir) if slides_dir else None), encoder,
                                       record, out_path, batch_size, num_workers, torch.device(device), precision,
                                       progress)
                if summary.stain_failed is not None:
                    summary.stain_failed += failed
            except READ_FAILURES as err:
                lines = str(err).strip().splitlines() or [""]
                # a DataLoader worker's error carries its traceback; its last line is "module.Type: message"
                reason = lines[-1] if len(lines) > 1 else f"{type(err).__name__}: {lines[0]}"
                log.warning("%s: feature extraction failed: %s", slide_dir.name, reason)
                summary.failures.append((slide_dir.name, reason))
                continue
            summary.done.append(slide_dir.name)
            summary.tiles += len(tiles)
    _update_failures(job_dir / FAILURES_FILENAME, [*summary.done, *summary.skipped], summary.failures)
    settings = {"job_dir": str(job_dir.resolve()), "encoder": record, "batch_size": batch_size,
                "num_workers": num_workers, "device": str(device), "precision": precision,
                "shard": f"{index}/{count}", "slides": list(names) if names else None,
                "slides_dir": str(slides_dir) if slides_dir else None, "summary": asdict(summary),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    suffix = f".shard{index}of{count}" if count > 1 else ""
    write_text_atomic(job_dir / f"extract_{record['tag']}{suffix}.json", json.dumps(settings, indent=2) + "\n")
    log.info("extract %s: %s", job_dir, summary)
    return summary


def _update_failures(path: Path, settled: list[str], failures: list[tuple[str, str]]) -> None:
    """Rewrite extract_failures.csv: earlier rows minus the slides settled now, plus new failures."""
    if not path.exists() and not failures:
        return
    done = set(settled)

    def update(rows: dict[str, str]) -> dict[str, str]:
        return {**{name: reason for name, reason in rows.items() if name not in done}, **dict(failures)}

    rewrite_shared_csv(path, ("slide", "reason"), update)
