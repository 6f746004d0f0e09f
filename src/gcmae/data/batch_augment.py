"""Pretraining augmentation on whole uint8 batches, on the training device, from one seeded generator per step.

The same draws as torchvision's `RandomResizedCrop` (scale, log-uniform aspect ratio, 10 tries, whole image as the
fallback), done for every image of a batch at once with `torchvision.ops.roi_align` (bilinear; it averages several
samples per output pixel when a crop shrinks), then random flips and 90° rotations (tissue has no up), an optional
HED stain jitter (Tellez et al. 2018: each stain's optical density scaled by U(1-s, 1+s) and shifted by U(-s, s),
in skimage's `rgb2hed` units), optional SimCLR colour distortion (`gcmae.data.colour_jitter`) and the mean/std
normalisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.ops import roi_align

from gcmae.data.colour_jitter import apply_colour_jitter, draw_colour_jitter

# Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (rows), exactly skimage.color.rgb_from_hed
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_LOG_ADJUST = math.log(1e-6)  # skimage's scale: stain = log(rgb) / log(1e-6) @ hed_from_rgb


def _stain_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    return _RGB_FROM_HED.float(), torch.linalg.inv(_RGB_FROM_HED).float()


def rgb_to_hed(rgb: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> haematoxylin, eosin, DAB concentrations (skimage.color.rgb2hed's values);
    negative concentrations are set to 0 unless `clamp` is False (then `hed_to_rgb` inverts it exactly)."""
    _, hed_from_rgb = _stain_matrices()
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    hed = torch.einsum("bchw,cd->bdhw", od, hed_from_rgb.to(rgb.device))
    return hed.clamp_min(0) if clamp else hed


def hed_to_rgb(hed: torch.Tensor, rgb_from_hed: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of `rgb_to_hed` (skimage.color.hed2rgb), clipped to [0, 1]. `rgb_from_hed` (3, 3) replaces the
    stain vectors (rows: H, E, DAB optical densities), e.g. to render the same stain amounts with other dyes."""
    if rgb_from_hed is None:
        rgb_from_hed, _ = _stain_matrices()
    log_rgb = -torch.einsum("bchw,cd->bdhw", hed * -_LOG_ADJUST, rgb_from_hed.to(hed.device))
    return torch.exp(log_rgb).clamp(0, 1)


def random_resized_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                         ratio: tuple[float, float], generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """(batch, 4) crop boxes x1, y1, x2, y2 in pixels, drawn like `RandomResizedCrop.get_params` (first valid try;
    the whole image where none of `tries` fits, which is torchvision's fallback for a square image)."""
    area = height * width
    target = area * torch.empty(batch, tries).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((batch,), -1))
    rows = torch.arange(batch)
    w = torch.where(first >= 0, w[rows, first.clamp_min(0)], torch.full((batch,), float(width)))
    h = torch.where(first >= 0, h[rows, first.clamp_min(0)], torch.full((batch,), float(height)))
    u = torch.rand(batch, 2, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    return torch.stack([left, top, left + w, top + h], dim=1)


class BatchAugment(nn.Module):
    """uint8 (B, 3, H, W) -> normalised float (B, 3, size, size): random resized crop, flips and 90° rotations,
    optional HED stain jitter, optional colour distortion (strength `colour_jitter`, applied with probability
    `colour_jitter_p`, then grayscale with probability `grayscale`), normalisation. Every draw comes from the
    `generator` passed in; the colour draws are made only when colour distortion or grayscale is on."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                 rotate90: bool = False, stain_jitter: float = 0.0,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), colour_jitter: float = 0.0,
                 colour_jitter_p: float = 0.8, grayscale: float = 0.0) -> None:
        super().__init__()
        if stain_jitter < 0:
            raise ValueError(f"stain_jitter must be >= 0, got {stain_jitter}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.hflip, self.rotate90, self.stain_jitter = hflip, rotate90, stain_jitter
        draw_colour_jitter(1, colour_jitter, colour_jitter_p, grayscale, torch.Generator())  # checks the values
        self.colour_jitter, self.colour_jitter_p, self.grayscale = colour_jitter, colour_jitter_p, grayscale
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        b, _, h, w = images.shape
        device = images.device
        x = images.float().div_(255)
        boxes = random_resized_boxes(b, h, w, self.scale, self.ratio, generator)
        rois = torch.cat([torch.arange(b, dtype=torch.float32).unsqueeze(1), boxes], dim=1).to(device)
        x = roi_align(x, rois, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flips = torch.rand(b, 3, generator=generator).to(device) < 0.5
        if self.hflip:
            x[flips[:, 0]] = x[flips[:, 0]].flip(-1)
        if self.rotate90:  # with the horizontal flip, vertical flip + transpose cover all 8 symmetries of a square
            x[flips[:, 1]] = x[flips[:, 1]].flip(-2)
            x[flips[:, 2]] = x[flips[:, 2]].transpose(-1, -2)
        if self.stain_jitter > 0:
            s = self.stain_jitter
            alpha = torch.empty(b, 3, 1, 1).uniform_(1 - s, 1 + s, generator=generator).to(device)
            beta = torch.empty(b, 3, 1, 1).uniform_(-s, s, generator=generator).to(device)
            x = hed_to_rgb(rgb_to_hed(x) * alpha + beta)
        if self.colour_jitter > 0 or self.grayscale > 0:
            draws = draw_colour_jitter(b, self.colour_jitter, self.colour_jitter_p, self.grayscale, generator)
            x = apply_colour_jitter(x, draws)
        return (x - self.mean) / self.std
