"""Optimiser set-up: AdamW parameter groups and the per-iteration warm-up + half-cycle cosine schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule of MAE/GCMAE: lr = base_lr * effective batch / 256."""
    return base_lr * effective_batch / 256


def warmup_cosine(step: float, warmup_steps: float, total_steps: float, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to `lr`, then half-cycle cosine down to `min_lr` (MAE's schedule, per iteration)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and 1-D parameters (norms); the fused kernel (1.08x per step for
    ViT-S/224 on CPU in benchmarks/throughput.py, and the fast path on CUDA)."""
    groups = param_groups_weight_decay(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
