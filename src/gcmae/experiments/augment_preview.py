"""What an augmentation strength does to real tiles: one row per strength, the same tiles and draws in each.

    python -m gcmae.experiments.augment_preview --folder ../shared/data/pcam/valid \
        --figure docs/figures/stain_jitter_levels.png --option stain_jitter --levels 0 0.03 0.1 0.2

Crops and flips are off, so only the colour changes between rows; `colour_jitter` is applied to every tile
(`colour_jitter_p` 1, where training's default is 0.8). For each level it prints the mean RGB and the share of all
channel values within one 8-bit step of 0 or 1 (saturated: the scan has some, the augmentation adds more, and what
is clipped there the encoder never sees).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gcmae.data.batch_augment import BatchAugment
from gcmae.data.datasets import EmptyDatasetError
from gcmae.data.in_memory import TensorImageDataset
from gcmae.io.atomic import write_bytes_atomic

OPTIONS = ("stain_jitter", "colour_jitter", "grayscale")


def saturated_fraction(x: torch.Tensor) -> float:
    """Share of the values of `x` (floats in [0, 1]) within one 8-bit step of 0 or 1, i.e. bytes 0, 1, 254, 255."""
    return ((x <= 1 / 255) | (x >= 254 / 255)).float().mean().item()


def augment_rows(images: torch.Tensor, option: str, levels: list[float], seed: int = 0
                 ) -> tuple[torch.Tensor, list[dict[str, object]]]:
    """float (levels, N, 3, H, W) in [0, 1] of uint8 `images` augmented at each level of `option`, and per level
    the mean RGB and the saturated fraction. Level 0 is the tiles as they are; every level reuses the same draws
    (the generator is re-seeded with `seed`), so rows differ only by strength."""
    if option not in OPTIONS:
        raise ValueError(f"option must be one of {OPTIONS}, got {option!r}")
    size = images.shape[-1]
    rows, stats = [], []
    for level in levels:
        kwargs = {option: level, "colour_jitter_p": 1.0} if option == "colour_jitter" else {option: level}
        aug = BatchAugment(size, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, mean=(0.0, 0.0, 0.0),
                           std=(1.0, 1.0, 1.0), **kwargs)
        x = aug(images, torch.Generator().manual_seed(seed)).clamp(0, 1)
        rows.append(x)
        stats.append({"level": level, "mean_rgb": [round(v, 3) for v in x.mean((0, 2, 3)).tolist()],
                      "saturated": round(saturated_fraction(x), 3)})
    return torch.stack(rows), stats


def save_grid(rows: torch.Tensor, path: Path) -> Path:
    """Write (levels, N, 3, H, W) floats in [0, 1] as one PNG, a row per level, atomically."""
    if rows.ndim != 5 or 0 in rows.shape[:2]:
        raise ValueError(f"expected (levels, N, 3, H, W) with at least one level and tile, got {tuple(rows.shape)}")
    grid = torch.cat([torch.cat(list(r), 2) for r in rows.clamp(0, 1)], 1)
    img = Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", default="data/samples/pcam/valid", help="class folders of tiles")
    p.add_argument("--option", choices=OPTIONS, default="stain_jitter")
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.2])
    p.add_argument("--n", type=int, default=6, help="tiles per row, spread over the folder")
    p.add_argument("--size", type=int, default=96, help="tiles are resized to this many pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws, the same for every level")
    p.add_argument("--figure", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    try:
        data = TensorImageDataset(args.folder, args.size, cache_dir=None, validate="none")
    except (FileNotFoundError, EmptyDatasetError) as err:
        raise SystemExit(f"augment_preview: {err}") from None
    pick = np.linspace(0, len(data) - 1, min(args.n, len(data))).round().astype(int)
    try:
        rows, stats = augment_rows(data.images[torch.from_numpy(pick)], args.option, args.levels, args.seed)
    except ValueError as err:  # a level out of the option's range, in BatchAugment's words
        p.error(str(err))
    for s in stats:
        print(f"{args.option}={s['level']:g}: mean RGB {s['mean_rgb']}, saturated {s['saturated']:.1%}")
    print(save_grid(rows, args.figure))


if __name__ == "__main__":
    main()
