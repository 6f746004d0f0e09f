"""SimCLR's colour distortion (Chen et al. 2020) per image of a batch, drawn from a seeded generator.

Crops of one image share its colour histogram, so an instance-discrimination task (the GCMAE memory bank) can be
solved from colour alone unless colour is distorted; SimCLR found this distortion essential. Strength `s` gives
brightness, contrast and saturation factors in U(1 - 0.8 s, 1 + 0.8 s) and a hue shift in U(-0.2 s, 0.2 s), applied
in a random order with probability `p` (SimCLR: 0.8), then grayscale with probability `grayscale` (SimCLR: 0.2).
The four operations are torchvision's own (`transforms.v2.functional`), called per image with the drawn factors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F


@dataclass
class ColourJitterDraws:
    """Per-image draws: factors (B, 4) for brightness, contrast, saturation, hue (1, 1, 1, 0 = unchanged),
    the order (B, 4) the operations run in, and which images turn grayscale (B,)."""
    factors: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor


def draw_colour_jitter(batch: int, strength: float, p: float, grayscale: float,
                       generator: torch.Generator) -> ColourJitterDraws:
    """Draw every image's colour distortion; images outside the probability `p` keep factors (1, 1, 1, 0)."""
    if not 0 <= strength <= 1.25:  # above 1.25 a factor could fall below 0
        raise ValueError(f"colour jitter strength must be in [0, 1.25], got {strength}")
    if not (0 <= p <= 1 and 0 <= grayscale <= 1):
        raise ValueError(f"colour jitter probabilities must be in [0, 1], got p={p}, grayscale={grayscale}")
    u = torch.rand(batch, 4, generator=generator)
    spread = torch.tensor([0.8, 0.8, 0.8, 0.2]) * strength
    factors = torch.cat([1 + spread[:3] * (2 * u[:, :3] - 1), spread[3:] * (2 * u[:, 3:] - 1)], dim=1)
    applied = torch.rand(batch, generator=generator) < p
    factors = torch.where(applied.unsqueeze(1), factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)
    gray = torch.rand(batch, generator=generator) < grayscale
    return ColourJitterDraws(factors, order, gray)


_OPERATIONS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
_UNCHANGED = (1.0, 1.0, 1.0, 0.0)


def apply_colour_jitter(images: torch.Tensor, draws: ColourJitterDraws) -> torch.Tensor:
    """(B, 3, H, W) RGB floats in [0, 1] -> the same, each image distorted by its own draws."""
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] != draws.factors.shape[0]:
        raise ValueError(f"expected (B, 3, H, W) with B = {draws.factors.shape[0]}, got {tuple(images.shape)}")
    out = images.clone()
    for i in range(images.shape[0]):
        x = out[i]
        for op_index in draws.order[i].tolist():
            factor = float(draws.factors[i, op_index])
            if factor != _UNCHANGED[op_index]:
                x = _OPERATIONS[op_index](x, factor)
        if draws.grayscale[i]:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        out[i] = x
    return out
