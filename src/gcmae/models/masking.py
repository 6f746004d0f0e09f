"""Per-sample random masking (MAE): keep the patches with the smallest noise."""
from __future__ import annotations

import torch


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep `int(L * (1 - mask_ratio))` tokens of x (B, L, D) per sample.

    Returns the kept tokens (B, kept, D) in ascending-noise order, the binary mask (B, L; 1 = removed) in the
    original order, and `ids_restore` (B, L) that puts a shuffled sequence back in the original order.
    """
    b, length, d = x.shape
    if noise.shape != (b, length):
        raise ValueError(f"noise must have shape {(b, length)}, got {tuple(noise.shape)}")
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, length, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore
