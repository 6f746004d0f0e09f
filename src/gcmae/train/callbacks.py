"""Callbacks: atomic checkpoint files, the kNN monitor, and the figures written at the end of a run."""
from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from gcmae.config import MonitorConfig
from gcmae.data.folders import check_same_classes, open_folder
from gcmae.encoders.embed import extract_features
from gcmae.io.atomic import atomic_path
from gcmae.scoring.knn import knn_methods, vote_accuracy
from gcmae.viz.curves import keep_previous_metrics

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, flushed, then renamed: a reader never sees a partial file.
    Loading never unpickles code (`weights_only=True`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def last_checkpoint_in(out_dir: str | Path) -> Path:
    """Where a run in `out_dir` writes (and resumes from) its latest checkpoint."""
    return Path(out_dir) / "checkpoints" / "last.ckpt"


def kept_checkpoints_in(out_dir: str | Path) -> Path:
    """The folder where `trainer.keep_every_n_epochs` keeps a run's epochNNN.ckpt files (see KeepEveryNEpochs)."""
    return Path(out_dir) / "checkpoints" / "kept"


def is_intact_checkpoint(path: Path) -> bool:
    """True when every member of the checkpoint's zip archive reads back with its CRC (a truncated or
    half-copied file fails); cheap next to loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def checkpoint_to_resume(out_dir: Path, resume: bool = True) -> Path | None:
    """The newest intact checkpoint of the run when `resume`: last.ckpt, else (when it is missing or damaged) the
    newest intact epochNNN.ckpt, with a warning naming what was skipped; None for a fresh run.

    First deletes the temporary files of an AtomicCheckpointIO write that a killed run left (in kept/ too); when
    resuming, keeps the previous metrics.csv as a part (Lightning's CSVLogger would overwrite it)."""
    folder = out_dir / "checkpoints"
    for stale in [*folder.glob(".*.tmp"), *kept_checkpoints_in(out_dir).glob(".*.tmp")]:
        stale.unlink()
    if not resume:
        _set_aside_kept(out_dir)
        return None
    last = last_checkpoint_in(out_dir)
    epochs = sorted(folder.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.exists() else []) + epochs
    for path in candidates:
        if is_intact_checkpoint(path):
            if path != last:
                damaged = ", ".join(str(p) for p in candidates[: candidates.index(path)])
                log.warning("resuming from %s: %s is damaged or missing (truncated copy or full disk?)",
                            path, damaged or last)
            keep_previous_metrics(out_dir / "logs")
            return path
        log.warning("checkpoint %s is damaged (its zip archive does not read back); skipping it", path)
    if candidates:
        raise RuntimeError(f"no intact checkpoint in {folder} to resume from ({', '.join(map(str, candidates))} "
                           "are all damaged): move the folder away to start afresh")
    _set_aside_kept(out_dir)
    return None


def _set_aside_kept(out_dir: Path) -> None:
    """A run started afresh in an old folder renames the old run's kept/ checkpoints to kept-before-<time>/, so
    that kept/ never mixes two runs' epochs (the old run's last.ckpt and epoch files are overwritten anyway)."""
    kept = kept_checkpoints_in(out_dir)
    if not any(kept.glob("*.ckpt")):
        return
    aside = kept.with_name(f"kept-before-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        kept.rename(aside)
    except FileNotFoundError:  # another process of a multi-device run moved it first
        return
    log.warning("starting afresh: the previous run's kept checkpoints moved from %s to %s", kept, aside)


class KeepNewestEpoch(L.Callback):
    """Deletes epochNNN.ckpt files other than the newest after each save. Lightning's own pruning tracks absolute
    paths, so it stops working once a run folder is moved or renamed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _prune(self, trainer: L.Trainer) -> None:
        if trainer.global_rank != 0:
            return
        # newest by write time, not by number: a --no-resume run into an old folder starts again at epoch000
        epochs = sorted(self.folder.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        for old in epochs[:-1]:
            old.unlink(missing_ok=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prune(trainer)  # the previous epoch's file is saved by now

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prune(trainer)


class KeepEveryNEpochs(Checkpoint):
    """Saves a checkpoint after every n-th epoch into `folder` and keeps them all, for probing a run along its
    schedule. Named like Lightning's epoch files, counted from 0: epoch004.ckpt is the state after 5 epochs.
    A `Checkpoint` subclass, so Lightning runs it after ModelCheckpoint: last.ckpt is saved first."""

    def __init__(self, folder: Path, every_n_epochs: int) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:  # every rank calls it; rank 0 writes
            trainer.save_checkpoint(self.folder / f"epoch{trainer.current_epoch:03d}.ckpt")


class KNNMonitor(L.Callback):
    """Weighted kNN (k, T) and 1-NN accuracy of the encoder on a labelled folder, logged as knn/*."""

    def __init__(self, cfg: MonitorConfig, img_size: int, mean: tuple, std: tuple) -> None:
        self.cfg = cfg
        self.reference = open_folder(cfg.train_dir, img_size, mean, std)
        self.query = open_folder(cfg.val_dir, img_size, mean, std)
        check_same_classes(self.reference.classes, self.reference.root, self.query.classes, self.query.root)

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        model = pl_module.model.encoder
        ref_f, ref_y = extract_features(model, self.reference, self.cfg.pool, self.cfg.batch_size)
        q_f, q_y = extract_features(model, self.query, self.cfg.pool, self.cfg.batch_size)
        k = self.cfg.k
        methods = knn_methods(ref_f, ref_y, q_f, len(self.reference.classes), (k,), self.cfg.temperature)
        return {f"knn/top1_k{k}": vote_accuracy(methods["nn1" if k == 1 else f"knn_k{k}"][1], q_y),
                "knn/top1_1nn": vote_accuracy(methods["nn1"][1], q_y)}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.cfg.every_n_epochs:
            return
        if trainer.is_global_zero:
            metrics = self.evaluate(pl_module)
            for key, value in metrics.items():
                pl_module.log(key, value, rank_zero_only=True)
            log.info("epoch %d kNN: %s", trainer.current_epoch, metrics)
        trainer.strategy.barrier()
