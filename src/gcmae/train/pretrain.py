"""Pretraining set-up: dataset, LightningModule, Trainer, callbacks, resume, figures."""
from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from gcmae.config import ConfigError, PretrainConfig, dump_yaml, to_dict
from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.in_memory import TensorImageDataset, default_cache_dir
from gcmae.data.sampler import SeededEpochSampler
from gcmae.data.transforms import eval_transform, pretrain_transform
from gcmae.io.atomic import write_text_atomic
from gcmae.stain.normalizer import make_normalizer
from gcmae.train.callbacks import (AtomicCheckpointIO, KeepEveryNEpochs, KeepNewestEpoch, KNNMonitor,
                                   checkpoint_to_resume, kept_checkpoints_in, last_checkpoint_in)
from gcmae.train.module import PretrainModule
from gcmae.train.precision import cpu_name, resolve_precision
from gcmae.train.progress import progress_callbacks
from gcmae.viz.curves import metrics_files, plot_curves
from gcmae.viz.reconstruction_grid import plot_reconstructions

log = logging.getLogger(__name__)


@dataclass
class PretrainRun:
    module: PretrainModule
    trainer: L.Trainer
    out_dir: Path
    num_images: int
    rejected: list[tuple[Path, str]]


class PretrainData(L.LightningDataModule):
    """Training loader with a seeded, rank-aware sampler (so resumes and DDP runs see the same data)."""

    def __init__(self, dataset: ImageFolderDataset | TensorImageDataset, cfg: PretrainConfig) -> None:
        super().__init__()
        self.dataset, self.cfg = dataset, cfg

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        world = self.trainer.world_size
        if len(self.dataset) < d.batch_size * world:
            raise ValueError(
                f"{d.train_dir}: {len(self.dataset)} images are fewer than one global batch "
                f"(data.batch_size={d.batch_size} x {world} process(es)); lower the batch size"
            )
        sampler = SeededEpochSampler(len(self.dataset), d.batch_size, self.cfg.trainer.seed, self.trainer.global_rank,
                                     world)
        return DataLoader(self.dataset, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0, drop_last=True)


class RunFigures(L.Callback):
    """At the end of fit (rank 0): loss curves and a reconstruction grid of fixed images."""

    def __init__(self, out_dir: Path, dataset: ImageFolderDataset | TensorImageDataset, cfg: PretrainConfig, num_images: int = 6) -> None:
        self.out_dir, self.dataset, self.cfg, self.num_images = out_dir, dataset, cfg, num_images

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        write_figures(self.out_dir, pl_module, self.dataset, self.cfg, self.num_images)


def write_figures(out_dir: Path, pl_module: PretrainModule, dataset: ImageFolderDataset | TensorImageDataset, cfg: PretrainConfig,
                  num_images: int = 6) -> None:
    log_dir = out_dir / "logs"
    if metrics_files(log_dir):  # after a resume the history is in metrics.partN.csv files too
        plot_curves(log_dir, out_dir / "loss_curves.png")
    if cfg.loss.reconstruction_weight > 0:
        transform = eval_transform(cfg.model.img_size, cfg.data.mean, cfg.data.std)
        step = max(1, len(dataset) // num_images)
        imgs = torch.stack([transform(dataset.load(i)) for i in range(0, step * num_images, step)][:num_images])
        model = pl_module.model.cpu() if pl_module.device.type != "cpu" else pl_module.model
        plot_reconstructions(model, imgs, out_dir / "reconstructions.png", cfg.data.mean, cfg.data.std,
                             seed=cfg.trainer.seed)


# what a run folder's weights and memory bank are bound to: the shapes of the model, the data and the seed
ARCHITECTURE = ("encoder", "img_size", "patch_size", "decoder_dim", "decoder_depth", "decoder_heads")


def _same_folder(a: object, b: object) -> bool:
    return a == b or (isinstance(a, str) and isinstance(b, str)
                      and os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b)))


def check_run_folder(out_dir: Path, cfg: PretrainConfig, num_images: int) -> None:
    """Refuse to resume a run folder with other data, another architecture or another seed (the memory bank's
    indices, the weights or the data order would no longer fit); warn about other changes (e.g. more epochs)."""
    saved, report = out_dir / "config.yaml", out_dir / "data_report.json"
    old = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else {}
    new = to_dict(cfg)
    changed = [f"{s}.{k}" for s in new for k in new[s]
               if s != "trainer" and old and old.get(s, {}).get(k) != new[s][k]]
    binding = [f"model.{k}" for k in ARCHITECTURE if f"model.{k}" in changed]
    if old and not _same_folder(old.get("data", {}).get("train_dir"), new["data"]["train_dir"]):
        binding.append("data.train_dir")
    if old and old.get("trainer", {}).get("seed", new["trainer"]["seed"]) != new["trainer"]["seed"]:
        binding.append("trainer.seed")
    for key, default in (("stain_norm", "none"), ("stain_target", "")):  # the images themselves would change
        if old and old.get("data", {}).get(key, default) != new["data"][key]:
            binding.append(f"data.{key}")
    # binding has judged these (a folder written before stain_norm existed had none)
    changed = [c for c in changed
               if c not in binding and c not in ("data.train_dir", "data.stain_norm", "data.stain_target")]
    if report.exists():
        before = json.loads(report.read_text()).get("images")
        if before is not None and before != num_images:
            raise ConfigError(f"{out_dir} holds a run trained on {before} images, but {cfg.data.train_dir} has "
                              f"{num_images}: its memory bank has one entry per image, so it cannot continue on "
                              f"these. Start a new run with trainer.out_dir=<a new folder>")
    if binding and not cfg.trainer.force_resume:
        details = "; ".join(_describe(c, old, new) for c in binding)
        raise ConfigError(f"{out_dir} holds a run trained with other settings: {details}. Start a new run with "
                          f"trainer.out_dir=<a new folder>, or add trainer.force_resume=true to continue this one "
                          f"anyway")
    if changed:
        log.warning("resuming with a config that differs from %s in: %s", saved, ", ".join(changed))


def _describe(key: str, old: dict, new: dict) -> str:
    if "." not in key:
        return key
    section, name = key.split(".", 1)
    return f"{key} was {old.get(section, {}).get(name)!r}, now {new[section][name]!r}"


def make_strategy(cfg: PretrainConfig) -> str | Strategy:
    """DDP without buffer broadcasting: every rank applies the same memory-bank update itself, so re-sending the
    whole bank (N x D floats) from rank 0 at every step would only cost time."""
    name = cfg.trainer.strategy
    if not name.startswith("ddp"):
        return name
    start_method = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}.get(name)
    if start_method is None:
        raise ValueError(f"trainer.strategy {name!r}: use auto, ddp, ddp_spawn or ddp_fork")
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DDPStrategy(start_method=start_method, find_unused_parameters=cfg.loss.reconstruction_weight == 0,
                       **no_buffer_sync)


def last_checkpoint(cfg: PretrainConfig) -> Path:
    """Where a run writes (and resumes from) its latest checkpoint."""
    return last_checkpoint_in(cfg.trainer.out_dir)


def run_pretrain(cfg: PretrainConfig, resume: bool = True, extra_callbacks: Sequence[L.Callback] = ()) -> PretrainRun:
    """Pretrain GCMAE as configured. With `resume`, continue from `<out_dir>/checkpoints/last.ckpt` if present."""
    out_dir = Path(cfg.trainer.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    d = cfg.data
    if d.in_memory:
        dataset = TensorImageDataset(d.train_dir, cfg.model.img_size, d.cache_dir or default_cache_dir(), d.validate,
                                     progress=cfg.trainer.progress_bar,
                                     stain=make_normalizer(d.stain_norm, d.stain_target or None))
    else:
        dataset = ImageFolderDataset(d.train_dir, pretrain_transform(cfg.model.img_size, d.crop_scale, d.hflip,
                                                                     d.mean, d.std), d.validate)
    ckpt_path = checkpoint_to_resume(out_dir, resume)
    config_file = out_dir / "config.yaml"
    if ckpt_path:
        check_run_folder(out_dir, cfg, len(dataset))
    write_text_atomic(config_file, dump_yaml(cfg))
    if dataset.rejected:
        write_text_atomic(out_dir / "rejected_images.txt",
                          "".join(f"{path}\t{reason}\n" for path, reason in dataset.rejected))
    dataset.write_report(out_dir / "data_report.json")  # {"images", "rejected", "warnings"} counts
    if getattr(dataset, "stain", None) is not None:  # the exact normaliser, so extraction can use the same
        write_text_atomic(out_dir / "stain.json", json.dumps(
            {**dataset.stain.to_dict(), "images_unchanged": dataset.stain_unchanged}, indent=1) + "\n")
    else:  # a forced resume without normalisation must not leave the old record behind
        (out_dir / "stain.json").unlink(missing_ok=True)
    log.info("training on %d images from %s (%d rejected)", len(dataset), d.train_dir, len(dataset.rejected))

    stain = getattr(dataset, "stain", None)
    module = PretrainModule(to_dict(cfg), num_data=len(dataset), stain=stain.to_dict() if stain is not None else None)
    callbacks: list[L.Callback] = [
        # no "-v1" files: a moved run folder keeps writing last.ckpt (Lightning versions names it thinks are taken)
        ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                        save_last=True, save_top_k=1, every_n_epochs=1, enable_version_counter=False),
        KeepNewestEpoch(out_dir / "checkpoints"),
        RunFigures(out_dir, dataset, cfg),
    ]
    if cfg.trainer.keep_every_n_epochs:
        callbacks.append(KeepEveryNEpochs(kept_checkpoints_in(out_dir), cfg.trainer.keep_every_n_epochs))
    m = cfg.monitor
    if m.train_dir or m.val_dir:
        callbacks.insert(0, KNNMonitor(m, cfg.model.img_size, d.mean, d.std))
    t = cfg.trainer
    choice = resolve_precision(t.precision, t.accelerator, module.model, cfg.model.img_size)
    log.info("precision %s (%s)", choice.precision, choice.reason)
    write_text_atomic(out_dir / "precision.json", json.dumps(asdict(choice), indent=2) + "\n")
    if choice.precision.startswith("bf16") and t.precision != "auto" and (
            t.accelerator == "cpu" or not torch.cuda.is_available()):
        log.warning("trainer.precision=%s on a CPU (%s): bf16 is much slower than fp32 on CPUs without bf16 "
                    "instructions; trainer.precision=auto measures which is faster here", t.precision, cpu_name())
    progress, show_bar = progress_callbacks(t.progress_bar)
    # a short epoch logs at least once (Lightning warns when an epoch has fewer batches than the interval)
    processes = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes
    log_every = max(1, min(t.log_every_n_steps, len(dataset) // (d.batch_size * processes)))
    # metrics.csv for plots and scripts; TensorBoard event files beside it (`tensorboard --logdir <out_dir>/logs`)
    loggers = [CSVLogger(out_dir, name="", version="logs"), TensorBoardLogger(out_dir / "logs", name="", version="tensorboard")]
    trainer = L.Trainer(
        default_root_dir=out_dir, max_epochs=cfg.optim.epochs, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=make_strategy(cfg), precision=choice.precision,
        accumulate_grad_batches=cfg.optim.accumulate_grad_batches, log_every_n_steps=log_every,
        deterministic=t.deterministic, enable_progress_bar=show_bar, logger=loggers,
        callbacks=[*callbacks, *progress, *extra_callbacks], plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=PretrainData(dataset, cfg), ckpt_path=ckpt_path)
    return PretrainRun(module, trainer, out_dir, len(dataset), dataset.rejected)
