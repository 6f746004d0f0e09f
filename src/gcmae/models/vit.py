"""ViT encoder presets built on timm's VisionTransformer, so our weights load with `timm.create_model`."""
from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def timm_name(preset: str, patch_size: int, img_size: int) -> str:
    """The timm model name with the same architecture, e.g. vit_base_patch16_224."""
    return f"{preset}_patch{patch_size}_{img_size}"


def create_encoder(
    name: str = "vit_base", img_size: int = 224, patch_size: int = 16, drop_path: float = 0.0, num_classes: int = 0
) -> VisionTransformer:
    """A timm VisionTransformer with a preset width/depth; no head unless `num_classes` > 0."""
    if name not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=drop_path,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **ENCODER_PRESETS[name],
    )
