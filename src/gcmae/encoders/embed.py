"""Encoder features: of a batch (`embed`), of a whole dataset in order (`extract_features`)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from gcmae.progress import Progress

log = logging.getLogger(__name__)


def embed(encoder: VisionTransformer, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """Features of unmasked images: the cls token or the mean of the patch tokens, after the final norm
    (what `GCMAE.embed` computes with its encoder)."""
    tokens = encoder.forward_features(imgs)
    return tokens[:, 0] if pool == "cls" else tokens[:, encoder.num_prefix_tokens :].mean(dim=1)


@torch.no_grad()
def extract_features(
    model: VisionTransformer, dataset: Dataset, pool: str = "cls", batch_size: int = 256, num_workers: int = 0,
    device: torch.device | str | None = None, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    excluded: list[int] | None = None, progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32 on CPU, labels (N,)) in dataset order, with the model in eval mode.

    `prepare` is applied to each batch on `device` before the model (e.g. stain normalisation). Items the dataset
    marks as unreadable (a negative index `-1 - i`, `ImageFolderDataset(unreadable="exclude")`) are dropped, never
    replaced; their dataset indices are appended to `excluded` when given. With `progress` (a name, e.g. the folder): a bar
    when stderr is a terminal, else a log line every ~10 % (gcmae.progress); none by default (the training monitor)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels, dropped = [], [], []
    with Progress(len(dataset), progress or "", bar=None if progress else False, steps=10 if progress else 0) as shown:
        for imgs, y, idx in loader:
            shown.update(len(idx))
            keep = torch.as_tensor(idx) >= 0
            if not keep.all():
                dropped += (-1 - torch.as_tensor(idx)[~keep]).tolist()
                imgs, y = imgs[keep], torch.as_tensor(y)[keep]
            if len(imgs) == 0:
                continue
            imgs = imgs.to(device)
            feats.append(embed(model, prepare(imgs) if prepare else imgs, pool).float().cpu())
            labels.append(torch.as_tensor(y))
    model.train(was_training)
    if dropped:
        files = getattr(dataset, "files", None)
        names = [str(files[i]) if files is not None else f"index {i}" for i in dropped]
        log.warning("%d unreadable image(s) excluded from the features (not replaced): %s", len(dropped),
                    ", ".join(names))
    if excluded is not None:
        excluded += dropped
    if not feats:
        raise OSError(f"none of the {len(dataset)} images could be read")
    return torch.cat(feats), torch.cat(labels)
