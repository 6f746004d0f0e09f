"""Frozen-feature probe of encoders on a train/valid folder pair (the learning study's protocol, issue 10).

    python -m gcmae.experiments.pcam_probe --train ../shared/data/pcam/train --val ../shared/data/pcam/valid \
        --out runs/probe ENCODER [ENCODER ...]

ENCODER is a checkpoint, an exported folder or a shipped encoder's name (anything `load_encoder` takes),
`random:ENCODER:PATCH:SEED` (an untrained ViT) or `colour-histogram` (RGB + HSV histograms, 8 bins each).
`--block N` probes the output of transformer block N (1-based) instead of the final norm's, through a LayerNorm
without learnt scale and shift, so that every depth is on the same footing. `--centre N` probes the centre N x N
pixels of every patch (PCam's label is about the centre 32 x 32), resized back to the encoder's input size; the
colour histogram is then taken over the same centre. `--stain-norm METHOD` (and `--stain-target`) stain-normalises
every train and valid image once before anything else (cached), for encoders pretrained with `data.stain_norm`;
its results are their own files and table group (`@<normaliser id>`, e.g. `@macenko-1e35095a`), the colour histogram included.
Each result is one JSON file in --out, written atomically and skipped when present, so a re-run resumes.
`--table` prints the mean and standard deviation over files that share a `--label`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gcmae.data.in_memory import TensorImageDataset, default_cache_dir
from gcmae.encoders.loading import RANDOM, load_encoder
from gcmae.evaluate.frozen_probe import colour_histogram_features, frozen_probe
from gcmae.io.atomic import write_text_atomic
from gcmae.stain.normalizer import CHOICES, StainNormalizer, make_normalizer

log = logging.getLogger(__name__)
COLOUR = "colour-histogram"


@torch.no_grad()
def encoder_features(spec: str, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu",
                     block: int | None = None, random_img_size: int | None = None,
                     stain: StainNormalizer | None = None) -> dict[str, np.ndarray]:
    """{"cls": (N, D), "mean": (N, D)} of the encoder named by `spec` on uint8 images (N, 3, S, S), resized to its
    input size: after the final norm, or after block `block` (1-based) and a LayerNorm without affine parameters.
    An untrained `random:` encoder is built for `random_img_size` (default S). `stain` is the normalisation the
    images already had (none here): a warning says when the encoder was pretrained on other images."""
    if spec.startswith("random:"):
        _, name, patch, seed = spec.split(":")
        enc = load_encoder(RANDOM, encoder=name, img_size=random_img_size or images.shape[-1], patch_size=int(patch),
                           seed=int(seed))
    else:
        enc = load_encoder(spec)
        problem = enc.stain_mismatch(stain)
        if problem:
            log.warning("%s (--stain-norm here)", problem)
    vit = enc.model.eval().to(device)
    if block is not None and not 1 <= block <= len(vit.blocks):
        raise ValueError(f"{spec}: block {block} requested, but the encoder has blocks 1..{len(vit.blocks)}")
    if block is not None and vit.num_prefix_tokens != 1:
        raise ValueError(f"{spec}: --block needs one class token, the encoder has {vit.num_prefix_tokens}")
    mean = torch.tensor(enc.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(enc.std, device=device).view(1, 3, 1, 1)
    cls, avg = [], []
    for start in range(0, images.shape[0], batch_size):
        x = (images[start : start + batch_size].to(device).float() / 255 - mean) / std
        if x.shape[-1] != enc.img_size:
            x = F.interpolate(x, size=(enc.img_size, enc.img_size), mode="bicubic", align_corners=False)
        if block is None:
            tokens = vit.forward_features(x)
        else:
            (patches, prefix), = vit.forward_intermediates(x, indices=[block - 1], norm=False, output_fmt="NLC",
                                                           intermediates_only=True, return_prefix_tokens=True,
                                                           stop_early=True)
            tokens = F.layer_norm(torch.cat([prefix, patches], 1), patches.shape[-1:])
        cls.append(tokens[:, 0].float().cpu())
        avg.append(tokens[:, vit.num_prefix_tokens :].mean(1).float().cpu())
    return {"cls": torch.cat(cls).numpy(), "mean": torch.cat(avg).numpy()}


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` pixels of images (..., S, S); for odd margins the extra pixel is at the end."""
    full = images.shape[-1]
    if not 0 < size <= full:
        raise ValueError(f"centre crop of {size} px asked for {full}-px images (it must be 1..{full})")
    top = (full - size) // 2
    return images[..., top : top + size, top : top + size]


def _slug(text: str) -> str:
    """A readable file name for an encoder spec; the hash keeps long specs that share an ending apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-80:]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def probe(specs: list[str], train_dir: str, val_dir: str, out: Path, label: str | None = None,
          cache_dir: str | None = None, size: int = 96, device: str = "cpu", block: int | None = None,
          centre: int | None = None, stain: StainNormalizer | None = None) -> list[Path]:
    """Probe every encoder of `specs`; one JSON per (encoder, pool) in `out`. Returns the files written or found."""
    if block is not None and (block < 1 or COLOUR in specs):
        raise ValueError(f"--block {block}: a block is numbered from 1 and applies to encoders, not to {COLOUR}")
    if centre is not None and not 0 < centre <= size:
        raise ValueError(f"--centre {centre}: the crop must be 1..{size} px of the {size}-px patches")
    cache = cache_dir or default_cache_dir()
    train = TensorImageDataset(train_dir, size, cache, validate="none", stain=stain)
    val = TensorImageDataset(val_dir, size, cache, validate="none", stain=stain)
    if train.classes != val.classes:
        raise ValueError(f"{train_dir} has classes {train.classes} but {val_dir} has {val.classes}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # a centre or block probe is its own result file and table group
    suffix = ("" if centre is None else f"@centre{centre}") + ("" if block is None else f"@block{block}") + (
        "" if stain is None else f"@{stain.id}")
    train_images = train.images if centre is None else centre_crop(train.images, centre)
    val_images = val.images if centre is None else centre_crop(val.images, centre)
    for spec in specs:
        pools = ["hist"] if spec == COLOUR else ["cls", "mean"]
        key = spec + suffix
        paths = {p: out / f"{_slug(key)}__{p}.json" for p in pools}
        if all(p.exists() for p in paths.values()):
            written += paths.values()
            continue
        if spec == COLOUR:
            feats = {"hist": (colour_histogram_features(train_images), colour_histogram_features(val_images))}
        else:
            tr = encoder_features(spec, train_images, device=device, block=block, random_img_size=size, stain=stain)
            va = encoder_features(spec, val_images, device=device, block=block, random_img_size=size, stain=stain)
            feats = {p: (tr[p], va[p]) for p in pools}
        for pool, (tr_x, va_x) in feats.items():
            result = frozen_probe(tr_x, train.labels.numpy(), va_x, val.labels.numpy(), train.classes)
            record = {"encoder": spec, "block": block, "centre": centre, "label": (label or spec) + suffix,
                      "stain": None if stain is None else stain.to_dict(),
                      "stain_unchanged": None if stain is None else [train.stain_unchanged, val.stain_unchanged],
                      "pool": pool, "train": str(train_dir), "val": str(val_dir), "num_train": len(train),
                      "num_val": len(val), **result}
            write_text_atomic(paths[pool], json.dumps(record, indent=1) + "\n")
            log.info("%s [%s]: logreg balanced accuracy %.4f, kNN20 %.4f", key, pool,
                     result["logreg"]["balanced_accuracy"], result["knn20"]["balanced_accuracy"])
            written.append(paths[pool])
    return written


def mean_sd(values: list[float]) -> str:
    """'0.776 ± 0.014' (sample standard deviation), or just the value when there is one."""
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{sd}"


def table(out: Path, metric: str = "balanced_accuracy") -> str:
    """Markdown: mean ± sd over runs that share a label, per pool, for the logistic probe and kNN."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        groups[(r["label"], r["pool"])].append(r)
    rows = ["| encoder | pool | n | logreg | kNN k20 | kNN k200 |", "|---|---|---:|---:|---:|---:|"]

    def cell(rs: list[dict], key: str) -> str:
        return mean_sd([r[key][metric] for r in rs])

    for (label, pool), rs in groups.items():
        rows.append(f"| {label} | {pool} | {len(rs)} | {cell(rs, 'logreg')} | {cell(rs, 'knn20')} | "
                    f"{cell(rs, 'knn200')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoders", nargs="*")
    p.add_argument("--train", default="../shared/data/pcam/train")
    p.add_argument("--val", default="../shared/data/pcam/valid")
    p.add_argument("--out", type=Path, required=True, help="folder of result JSON files")
    p.add_argument("--label", help="group name for --table (default: the encoder spec)")
    p.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/gcmae)")
    p.add_argument("--device", default="cpu", help="device for the encoder (e.g. cuda)")
    p.add_argument("--block", type=int, help="probe the output of this block (1-based) instead of the final norm's")
    p.add_argument("--centre", type=int, help="probe the centre N x N pixels of each patch, resized to the input")
    p.add_argument("--stain-norm", choices=CHOICES, default="none",
                   help="stain-normalise every train and valid image first (default none)")
    p.add_argument("--stain-target", help="target image of --stain-norm (default: the shipped target)")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table:
        probe(args.encoders, args.train, args.val, args.out, args.label, args.cache_dir, device=args.device,
              block=args.block, centre=args.centre, stain=make_normalizer(args.stain_norm, args.stain_target))
    print(table(args.out))


if __name__ == "__main__":
    main()
