"""Optimiser set-up: AdamW parameter groups (plain, or with MAE's layer-wise lr decay) and the per-iteration
warm-up + half-cycle cosine schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from torch.optim.lr_scheduler import LambdaLR


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule of MAE/GCMAE: lr = base_lr * effective batch / 256."""
    return base_lr * effective_batch / 256


def warmup_cosine(step: float, warmup_steps: float, total_steps: float, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to `lr`, then half-cycle cosine down to `min_lr` (MAE's schedule, per iteration)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_config(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_epochs: float,
                         epochs: int, stepping_batches: float) -> dict[str, Any]:
    """Lightning's `configure_optimizers` answer: `optimizer` (peak `lr`) with a per-step LambdaLR following
    `warmup_cosine` over max(1, stepping_batches) steps, warming up for warmup_epochs / epochs of them."""
    total_steps = max(1, int(stepping_batches))
    warmup_steps = warmup_epochs * total_steps / epochs

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps, lr, min_lr) / lr

    scheduler = LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and 1-D parameters (norms); the fused kernel (1.08x per step for
    ViT-S/224 on CPU in benchmarks/throughput.py, and the fast path on CUDA)."""
    groups = param_groups_weight_decay(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def vit_layer_id(name: str, num_blocks: int) -> int:
    """MAE's `get_layer_id_for_vit`: 0 for the embeddings, i + 1 for block i, num_blocks + 1 for the rest
    (final norm / fc_norm, head)."""
    if name in ("cls_token", "pos_embed", "reg_token") or name.startswith(("patch_embed.", "norm_pre.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float,
                             no_weight_decay: frozenset[str] = frozenset({"cls_token", "pos_embed", "reg_token"}),
                             ) -> list[dict[str, Any]]:
    """MAE's `param_groups_lrd` for a timm ViT: lr_scale = layer_decay ** (num_blocks + 1 - layer_id), no weight
    decay for 1-D parameters (biases, norms) and the names in `no_weight_decay`.

    timm's `param_groups_layer_decay` (1.0.31) puts the final norm in the last block's layer (scale decay^1);
    MAE gives it the head's scale 1, hence this version.
    """
    num_blocks = len(model.blocks)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = vit_layer_id(name, num_blocks)
        decay = 0.0 if param.ndim == 1 or name in no_weight_decay else weight_decay
        key = f"layer_{layer}_{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(key, {"params": [], "param_names": [], "weight_decay": decay,
                                        "lr_scale": layer_decay ** (num_blocks + 1 - layer)})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def build_adamw_layer_decay(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                            betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over `param_groups_layer_decay`, each group's lr = lr x its lr_scale (a LambdaLR schedule then
    multiplies every group's lr by the same factor)."""
    groups = param_groups_layer_decay(model, weight_decay, layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
