"""What an augmentation strength does to real tiles: one row per strength, the same tiles and draws in each.

    python -m gcmae.experiments.augment_preview --figure docs/figures/stain_jitter_levels.png \
        --option stain_jitter --levels 0 0.03 0.1 0.2

Crops and flips are off, so only the colour changes between rows. For each level it prints the mean RGB and the
fraction of channel values at 0 or 1 (saturated by the augmentation: information the encoder never sees).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gcmae.data.batch_augment import BatchAugment
from gcmae.data.in_memory import TensorImageDataset
from gcmae.io.atomic import write_bytes_atomic

OPTIONS = ("stain_jitter", "colour_jitter", "grayscale")


def augment_rows(images: torch.Tensor, option: str, levels: list[float], seed: int = 0
                 ) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """float (levels, N, 3, H, W) in [0, 1] of uint8 `images` augmented at each level of `option`, and per level
    the mean RGB and the saturated fraction. Level 0 is the tiles as they are."""
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
                      "saturated": round(((x <= 1 / 255) | (x >= 254 / 255)).float().mean().item(), 3)})
    return torch.stack(rows), stats


def save_grid(rows: torch.Tensor, path: Path) -> Path:
    """Write (levels, N, 3, H, W) as one PNG: a row per level, atomically."""
    grid = torch.cat([torch.cat(list(r), 2) for r in rows], 1)
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
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", type=Path, required=True)
    args = p.parse_args(argv)
    data = TensorImageDataset(args.folder, args.size, cache_dir=None, validate="none")
    if len(data) == 0:
        raise SystemExit(f"no images in {args.folder}")
    pick = np.linspace(0, len(data) - 1, min(args.n, len(data))).round().astype(int)
    rows, stats = augment_rows(data.images[torch.from_numpy(pick)], args.option, args.levels, args.seed)
    for s in stats:
        print(f"{args.option}={s['level']:g}: mean RGB {s['mean_rgb']}, saturated {s['saturated']:.1%}")
    print(save_grid(rows, args.figure))


if __name__ == "__main__":
    main()
