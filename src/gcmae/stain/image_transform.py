"""A stain normaliser as a per-image dataset transform (PIL in, PIL out), for pipelines that augment PIL images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from gcmae.stain.normalizer import StainNormalizer


@dataclass
class StainTransform:
    """Stain-normalise one PIL image before the rest of a transform (RGB out); an image whose stain cannot be
    estimated (background, glass) is returned unchanged, as in every other stain-normalised pipeline here. It is
    applied at the image's own resolution, before any resize or crop."""

    normalizer: StainNormalizer

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")  # one mode out, whatever comes in
        batch = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)
        out = self.normalizer.normalize(batch)
        if out.num_failed:
            return image
        return Image.fromarray(out.images[0].permute(1, 2, 0).numpy())


def with_stain(transform: Callable[[Image.Image], Any],
               normalizer: StainNormalizer | None) -> Callable[[Image.Image], Any]:
    """`transform` preceded by stain normalisation with `normalizer` (unchanged when it is None)."""
    if normalizer is None:
        return transform
    return transforms.Compose([StainTransform(normalizer), transform])
