"""Encoder features for an image folder."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from gcmae.models.gcmae import GCMAE


@torch.no_grad()
def extract_features(
    model: GCMAE, dataset: Dataset, pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
    device: torch.device | str | None = None, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32 on CPU, labels (N,)) in dataset order, with the model in eval mode.

    `prepare` is applied to each batch on `device` before the model (e.g. stain normalisation)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for imgs, y, _ in loader:
        imgs = imgs.to(device)
        feats.append(model.embed(prepare(imgs) if prepare else imgs, pool).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
