"""The paper's augmentations and H&E normalisation constants."""
from __future__ import annotations

from torchvision import transforms as T

from gcmae.config import PATHOLOGY_MEAN, PATHOLOGY_STD

Stats = tuple[float, float, float]


def pretrain_transform(
    img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
    mean: Stats = PATHOLOGY_MEAN, std: Stats = PATHOLOGY_STD,
) -> T.Compose:
    """RandomResizedCrop + horizontal flip + normalisation, as in MAE/GCMAE pretraining."""
    steps = [T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(img_size: int, mean: Stats = PATHOLOGY_MEAN, std: Stats = PATHOLOGY_STD) -> T.Compose:
    """Resize the short side to `img_size`, centre-crop, normalise."""
    return T.Compose([
        T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
