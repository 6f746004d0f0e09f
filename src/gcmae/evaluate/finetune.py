"""`gcmae finetune`: GCMAE's end-to-end fine-tuning recipe (the official `main_finetune.py`, i.e. MAE's).

A timm ViT initialised from any encoder `load_encoder` reads (or a random init), a linear head on the cls token
(or MAE's global pool), AdamW with layer-wise lr decay, per-iteration warm-up + cosine, label smoothing,
RandomResizedCrop + flip + RandAugment (+ random erasing) for training and resize + centre-crop for evaluation
(each image stain-normalised first with `--stain-norm`).
Lightning runs the loop; every epoch is validated, the best epoch by `--metric` is kept as `checkpoints/best.ckpt`
(weights) and `checkpoints/last.ckpt` (full state) resumes an interrupted run. At the end the best weights are
evaluated on the val folder (metrics.json, report.md, confusion matrix, curves.png). A finished run is skipped.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.sampler import SeededEpochSampler
from gcmae.device import resolve_device
from gcmae.encoders.loading import Encoder
from gcmae.evaluate.common import encoder_from_options, open_labelled_pair
from gcmae.evaluate.finetune_module import (
    FinetuneModule,
    encoder_architecture,
    finetune_train_transform,
    load_pretrained,
    predict,
)
from gcmae.evaluate.linprobe_paper import EVAL_CROP_RATIO, probe_eval_transform
from gcmae.evaluate.options import FinetuneOptions, settings
from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.report import console_table, save_evaluation
from gcmae.stain import StainNormalizer
from gcmae.stain.image_transform import with_stain
from gcmae.train.callbacks import AtomicCheckpointIO, checkpoint_to_resume
from gcmae.viz.curves import metrics_files

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

# may change between a run and its resume (the checkpoint's content is compared, not its path)
RUNTIME_ONLY = ("out", "device", "num_workers", "checkpoint")
METHOD = "finetune"


def check_options(opts: FinetuneOptions) -> None:
    """ValueError naming the first option out of range."""
    checks = [("epochs", opts.epochs >= 1, ">= 1"), ("warmup_epochs", 0 <= opts.warmup_epochs, ">= 0"),
              ("batch_size", opts.batch_size >= 1, ">= 1"), ("base_lr", opts.base_lr > 0, "> 0"),
              ("min_lr", opts.min_lr >= 0, ">= 0"), ("layer_decay", 0 < opts.layer_decay <= 1, "in (0, 1]"),
              ("weight_decay", opts.weight_decay >= 0, ">= 0"), ("drop_path", 0 <= opts.drop_path < 1, "in [0, 1)"),
              ("label_smoothing", 0 <= opts.label_smoothing < 1, "in [0, 1)"),
              ("crop_scale", 0 < opts.crop_scale[0] <= opts.crop_scale[1] <= 1, "0 < min <= max <= 1"),
              ("randaug_ops", opts.randaug_ops >= 0, ">= 0"), ("reprob", 0 <= opts.reprob <= 1, "in [0, 1]")]
    for name, ok, want in checks:
        if not ok:
            raise ValueError(f"{name} must be {want}, got {getattr(opts, name)}")


def _check_folders(opts: FinetuneOptions, train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    if len(train.classes) < 2:
        raise ValueError(f"{opts.train}: fine-tuning needs at least two classes, found {train.classes}")
    if opts.metric == "auc" and len(set(val.labels)) < len(val.classes):
        raise ValueError(f"{opts.val}: --metric auc needs val images of every class ({val.classes})")


def _run_record(opts: FinetuneOptions, identity: dict[str, Any], train: ImageFolderDataset,
                val: ImageFolderDataset, stain: StainNormalizer | None) -> dict[str, Any]:
    """What decides a run's result: compared with the saved record before resuming or skipping. The stain
    normaliser counts by its id (what it does), not by the flags that chose it."""
    values = {k: v for k, v in settings(opts).items() if k not in RUNTIME_ONLY + ("stain_norm", "stain_target")}
    record = {"settings": values, "weights": identity, "classes": train.classes,
              "num_train": len(train), "num_val": len(val)}
    if stain is not None:  # absent without one, as recorded before --stain-norm existed, so those runs resume
        record["stain_id"] = stain.id
    return record


def _check_same_run(out: Path, record: dict[str, Any]) -> bool:
    """True when `out` holds a run (finished or not) of this record; ValueError when it holds another run."""
    path = out / "run.json"
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable record of an earlier run ({err}); delete {out} to start over") from None
    if old == record:
        return True
    changed = [k for k in record["settings"] if old.get("settings", {}).get(k) != record["settings"][k]]
    changed += [k for k in ("weights", "classes", "num_train", "num_val", "stain_id") if old.get(k) != record.get(k)]
    raise ValueError(f"{out} holds a fine-tuning run with other settings ({', '.join(changed)} differ, see "
                     f"{path}); use another --out, or delete {out} to start over")


def epoch_history(log_dir: Path) -> list[dict[str, float]]:
    """Per-epoch train loss and val metrics from the CSV logs (all parts kept across resumes)."""
    rows: dict[int, dict[str, float]] = {}
    for file in metrics_files(log_dir):
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                entry = rows.setdefault(int(float(row["epoch"])), {})
                for key, value in row.items():
                    if value not in ("", None) and (key.startswith("val/") or key == "train/loss_epoch"):
                        entry[key.replace("/", "_").removesuffix("_epoch")] = float(value)
    return [{"epoch": e, **rows[e]} for e in sorted(rows) if rows[e]]


def plot_finetune_curves(history: list[dict[str, float]], metric: str, best_epoch: int | None,
                         out_png: Path) -> Path:
    """curves.png: train / val loss and the val metrics per epoch, the best epoch marked."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        points = [(h["epoch"] + 1, h[key]) for h in history if key in h]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=label)
    for key in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auc"):
        points = [(h["epoch"] + 1, h[key]) for h in history if key in h]
        if points:
            ax_metric.plot(*zip(*points), marker="o", lw=2 if key == f"val_{metric}" else 1,
                           label=key.removeprefix("val_"))
    if best_epoch is not None:
        ax_metric.axvline(best_epoch + 1, color="grey", ls="--", label=f"best ({metric})")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_metric.set(xlabel="epoch", ylabel="score", title="validation")
    ax_loss.legend()
    ax_metric.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png


def _trainer(opts: FinetuneOptions, out: Path, device: torch.device, steps: int,
             extra_callbacks: list[L.Callback]) -> L.Trainer:
    # the best callback comes first so that last.ckpt, written after it, holds its updated best score
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=f"val/{opts.metric}", mode="max",
                           save_top_k=1, save_weights_only=True, enable_version_counter=False)
    # without a monitor, top-1 is the latest epoch (Lightning's save_last only writes when a top-k file is saved)
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    if opts.precision.startswith("bf16") and device.type == "cpu":
        log.warning("precision %s on a CPU is usually slower than 32-true", opts.precision)
    return L.Trainer(
        default_root_dir=out, max_epochs=opts.epochs, accelerator=device.type,
        devices=[device.index] if device.index is not None else 1, precision=opts.precision,
        logger=CSVLogger(out, name="", version="logs"), callbacks=[best, last, *extra_callbacks],
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps)), enable_model_summary=False)


def run_finetune(opts: FinetuneOptions, extra_callbacks: list[L.Callback] = ()) -> dict[str, Any]:
    """Fine-tune on opts.train, pick the best epoch on opts.val, evaluate it, write everything to opts.out.

    Re-running resumes from `checkpoints/last.ckpt`, or returns the saved results when the run has finished;
    an output folder holding a run with other settings is an error.
    """
    check_options(opts)
    device = resolve_device(opts.device)
    out = Path(opts.out)
    train, val = open_labelled_pair(opts.train, opts.val)
    _check_folders(opts, train, val)
    encoder = encoder_from_options(opts)
    record = _run_record(opts, encoder.identity, train, val, encoder.stain)
    resuming = _check_same_run(out, record)
    if resuming and (out / "report.md").exists() and (out / "metrics.json").exists():
        saved = json.loads((out / "metrics.json").read_text())
        print(f"{out}: this fine-tuning run has finished; skipped (delete the folder to run it again)")
        print(console_table(saved["results"]))
        return {**saved, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "run.json", json.dumps(record, indent=2) + "\n")
    write_text_atomic(out / "config.yaml", yaml.safe_dump(settings(opts), sort_keys=False))

    L.seed_everything(opts.seed, workers=True, verbose=False)
    size, mean, std = encoder.img_size, encoder.mean, encoder.std
    # stain-normalised first (at the image's own size), then augmented
    train.transform = with_stain(finetune_train_transform(size, mean, std, opts.crop_scale, opts.randaug_ops,
                                                          opts.randaug_magnitude, opts.reprob), encoder.stain)
    val.transform = with_stain(probe_eval_transform(size, mean, std), encoder.stain)
    batch = min(opts.batch_size, len(train))
    if batch < opts.batch_size:
        log.warning("%s has %d images, fewer than --batch-size %d: training with batch %d", opts.train, len(train),
                    opts.batch_size, batch)
    arch = encoder_architecture(encoder.model)
    module = FinetuneModule(arch, train.classes, settings(opts), batch)
    load_pretrained(module.model, encoder.model.state_dict(), encoder.description)
    del encoder.model  # copied into the classifier: not needed any more
    sampler = SeededEpochSampler(len(train), batch, opts.seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(train, batch_size=batch, sampler=sampler, num_workers=opts.num_workers,
                              pin_memory=pin, persistent_workers=opts.num_workers > 0, drop_last=True)
    val_loader = DataLoader(val, batch_size=opts.batch_size, shuffle=False, num_workers=opts.num_workers,
                            pin_memory=pin)

    last = checkpoint_to_resume(out)
    if last:
        log.info("resuming from %s", last)
    trainer = _trainer(opts, out, device, len(train_loader), list(extra_callbacks))
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=last)
    return _evaluate_best(opts, out, module, val_loader, device, record, encoder, arch)


def _evaluate_best(opts: FinetuneOptions, out: Path, module: FinetuneModule, val_loader: DataLoader,
                   device: torch.device, record: dict[str, Any], encoder: Encoder,
                   arch: dict[str, Any]) -> dict[str, Any]:
    """The best checkpoint's metrics on the val folder, curves.png, metrics.json, report.md."""
    weights = encoder.description
    best_path = out / "checkpoints" / "best.ckpt"
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    probs, labels = predict(module.model, val_loader, device)
    history = epoch_history(out / "logs")
    best_epoch = int(best["epoch"])
    plot_finetune_curves(history, opts.metric, best_epoch, out / "curves.png")
    metrics = {**classification_metrics(labels, probs, module.classes), "best_epoch": best_epoch + 1,
               "selected_by": opts.metric}
    size, batch = arch["img_size"], module.batch_size
    extra = {"weights": weights, "architecture": arch, "num_train": record["num_train"],
             "num_val": record["num_val"], "classes": module.classes, "batch_size": batch,
             "peak_lr": module.peak_lr, "best_checkpoint": str(best_path), "history": history,
             "stain": encoder.stain.to_dict() if encoder.stain is not None else None}
    notes = [f"Fine-tuned {weights} end to end: {opts.pool} head, AdamW (lr {opts.base_lr} x {batch} / 256 = "
             f"{module.peak_lr:.3g}, layer decay {opts.layer_decay}, weight decay {opts.weight_decay}), "
             f"{opts.epochs} epochs ({opts.warmup_epochs} warm-up, cosine to {opts.min_lr}), drop path "
             f"{opts.drop_path}, label smoothing {opts.label_smoothing}; RandomResizedCrop {list(opts.crop_scale)} + "
             f"flip + RandAugment({opts.randaug_ops}, {opts.randaug_magnitude}) + random erasing {opts.reprob}; "
             f"eval resize {round(size / EVAL_CROP_RATIO)} + centre-crop {size}.",
             f"Best epoch by val {opts.metric}: {best_epoch + 1} of {opts.epochs}; the metrics below are that "
             f"checkpoint's on the val folder (which also chose it: report a separate test folder for an "
             f"unbiased number)."]
    results = {METHOD: metrics}
    save_evaluation(out, METHOD, "Fine-tuning", settings(opts), results, extra,
                    figures=[("loss and validation metrics per epoch", "curves.png")], notes=notes)
    print(console_table(results))
    print(f"outputs in {out} (metrics.json, report.md, curves.png, confusion_{METHOD}.csv/png, checkpoints/)")
    return {"command": METHOD, "settings": settings(opts), "results": results, **extra, "skipped": False}
