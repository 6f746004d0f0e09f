"""MAE/GCMAE's linear-probing protocol: frozen encoder, BatchNorm (no affine) + linear head on the cls token.

As in MAE's `main_linprobe.py`: head weight ~ trunc-normal(std 0.01), bias 0; LARS (momentum 0.9, trust
coefficient 0.001; biases are not adapted) with lr = base_lr x batch / 256 (base_lr 0.1), weight decay 0,
90 epochs with 10 warm-up epochs then half-cycle cosine, per iteration; RandomResizedCrop + horizontal flip for
training, resize to size x 256/224 + centre-crop for evaluation. LARS is timm's `Lars`; with weight decay 0 its
update is MAE's.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
from timm.optim import Lars
from torch.utils.data import DataLoader
from torchvision import transforms as T

from gcmae.data.datasets import ImageFolderDataset
from gcmae.encoders.embed import embed
from gcmae.encoders.loading import Encoder
from gcmae.evaluate.common import encoder_from_options, encoder_used, open_labelled_pair
from gcmae.evaluate.options import LinprobeOptions
from gcmae.scoring.metrics import classification_metrics
from gcmae.stain.image_transform import with_stain
from gcmae.train.optim import scaled_lr, warmup_cosine

log = logging.getLogger(__name__)

LARS_MOMENTUM = 0.9
LARS_TRUST = 0.001
EVAL_CROP_RATIO = 224 / 256


class LinearProbe(nn.Module):
    """BatchNorm1d(affine=False, eps=1e-6) followed by a linear layer, MAE's probe head."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


def build_lars(head: nn.Linear, lr: float, weight_decay: float = 0.0) -> Lars:
    """LARS as in MAE: the trust ratio and weight decay apply to the weight matrix, not to the bias."""
    return Lars([
        {"params": [head.weight], "weight_decay": weight_decay, "always_adapt": True},
        {"params": [head.bias], "weight_decay": 0.0, "always_adapt": False},
    ], lr=lr, momentum=LARS_MOMENTUM, trust_coeff=LARS_TRUST)


def probe_train_transform(img_size: int, mean: tuple, std: tuple) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def probe_eval_transform(img_size: int, mean: tuple, std: tuple) -> T.Compose:
    return T.Compose([T.Resize(round(img_size / EVAL_CROP_RATIO), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size), T.ToTensor(), T.Normalize(mean, std)])


@torch.no_grad()
def _features(encoder: Encoder, imgs: torch.Tensor, pool: str) -> torch.Tensor:
    return embed(encoder.model, imgs, pool).float()


def train_probe(encoder: Encoder, dataset: ImageFolderDataset, opts: LinprobeOptions,
                device: torch.device) -> tuple[LinearProbe, list[dict[str, float]]]:
    """Train the head for opts.epochs on augmented images through the frozen encoder; per-epoch history."""
    model = encoder.model.to(device).eval().requires_grad_(False)
    probe = LinearProbe(model.embed_dim, len(dataset.classes)).to(device)
    batch = min(opts.probe_batch_size, len(dataset))
    peak_lr = scaled_lr(opts.base_lr, batch)
    optimizer = build_lars(probe.head, peak_lr, opts.weight_decay)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=opts.num_workers,
                        generator=torch.Generator().manual_seed(opts.seed))
    steps, total = len(loader), len(loader) * opts.epochs
    if opts.warmup_epochs >= opts.epochs:
        log.warning("warm-up (%s epochs) is not shorter than training (%d epochs): the lr never reaches its peak",
                    opts.warmup_epochs, opts.epochs)
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(opts.epochs):
        probe.train()
        total_loss, lr = 0.0, 0.0
        for it, (imgs, labels, _) in enumerate(loader):
            lr = warmup_cosine(epoch * steps + it, opts.warmup_epochs * steps, total, peak_lr, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = criterion(probe(_features(encoder, imgs.to(device), opts.pool)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        history.append({"epoch": epoch + 1, "loss": total_loss / steps, "lr": lr})
        log.info("linprobe epoch %d/%d: loss %.4f, lr %.3g", epoch + 1, opts.epochs, total_loss / steps, lr)
    return probe, history


@torch.no_grad()
def predict(encoder: Encoder, probe: LinearProbe, dataset: ImageFolderDataset, pool: str, batch_size: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities (N, C), labels (N,)) on `dataset`, the probe's BatchNorm in eval mode."""
    probe.eval()
    probs, labels = [], []
    for imgs, y, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs.append(probe(_features(encoder, imgs.to(device), pool)).softmax(dim=1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(probs), torch.cat(labels)


def run_paper(opts: LinprobeOptions, device: torch.device) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Train on opts.train, evaluate on opts.val; (results, extra for metrics.json, report notes)."""
    if opts.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {opts.epochs}")
    train, val = open_labelled_pair(opts.train, opts.val)
    if len(train) < 2:
        raise ValueError(f"{opts.train}: the paper protocol needs at least 2 training images (BatchNorm)")
    encoder = encoder_from_options(opts)
    size, mean, std = encoder.img_size, encoder.mean, encoder.std
    # stain-normalised first, then augmented (the frozen features are not normalised again)
    train.transform = with_stain(probe_train_transform(size, mean, std), encoder.stain)
    val.transform = with_stain(probe_eval_transform(size, mean, std), encoder.stain)
    with torch.random.fork_rng(devices=[]):  # RandomResizedCrop / flip draw from torch's global generator
        torch.manual_seed(opts.seed)
        probe, history = train_probe(encoder, train, opts, device)
    probs, labels = predict(encoder, probe, val, opts.pool, opts.batch_size, device)
    batch = min(opts.probe_batch_size, len(train))
    metrics = {**classification_metrics(labels, probs, train.classes), "final_train_loss": history[-1]["loss"]}
    extra = {"weights": encoder.description, "encoder_used": encoder_used(encoder), "mean": list(mean), "std": list(std), "num_train": len(train),
             "num_val": len(val), "classes": train.classes, "history": history,
             "peak_lr": scaled_lr(opts.base_lr, batch), "batch_size": batch,
             "stain": encoder.stain.to_dict() if encoder.stain is not None else None}
    notes = [f"Paper protocol: frozen encoder ({encoder.description}), BatchNorm (no affine) + linear head on the "
             f"{opts.pool} token, LARS, lr {opts.base_lr} x {batch} / 256, {opts.epochs} epochs "
             f"({opts.warmup_epochs} warm-up), RandomResizedCrop + flip; eval resize {round(size / EVAL_CROP_RATIO)}"
             f" + centre-crop {size}. Final training loss {history[-1]['loss']:.4f}."]
    return {"linear_probe_paper": metrics}, extra, notes
