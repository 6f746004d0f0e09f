"""Frozen-feature probe of encoders on a train/valid folder pair (the learning study's protocol, issue 10).

    python -m gcmae.experiments.pcam_probe --train ../shared/data/pcam/train --val ../shared/data/pcam/valid \
        --out runs/probe ENCODER [ENCODER ...]

ENCODER is a checkpoint, an exported folder or a shipped encoder's name (anything `load_encoder` takes),
`random:ENCODER:PATCH:SEED` (an untrained ViT) or `colour-histogram` (RGB + HSV histograms, 8 bins each).
`--block N` probes the output of transformer block N (1-based) instead of the final norm's, through a LayerNorm
without learnt scale and shift, so that every depth is on the same footing.
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

log = logging.getLogger(__name__)
COLOUR = "colour-histogram"


@torch.no_grad()
def encoder_features(spec: str, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu",
                     block: int | None = None) -> dict[str, np.ndarray]:
    """{"cls": (N, D), "mean": (N, D)} of the encoder named by `spec` on uint8 images (N, 3, S, S): after the final
    norm, or after block `block` (1-based) and a LayerNorm without affine parameters."""
    if spec.startswith("random:"):
        _, name, patch, seed = spec.split(":")
        enc = load_encoder(RANDOM, encoder=name, img_size=images.shape[-1], patch_size=int(patch), seed=int(seed))
    else:
        enc = load_encoder(spec)
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


def _slug(text: str) -> str:
    """A readable file name for an encoder spec; the hash keeps long specs that share an ending apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-80:]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def probe(specs: list[str], train_dir: str, val_dir: str, out: Path, label: str | None = None,
          cache_dir: str | None = None, size: int = 96, device: str = "cpu", block: int | None = None) -> list[Path]:
    """Probe every encoder of `specs`; one JSON per (encoder, pool) in `out`. Returns the files written or found."""
    if block is not None and (block < 1 or COLOUR in specs):
        raise ValueError(f"--block {block}: a block is numbered from 1 and applies to encoders, not to {COLOUR}")
    cache = cache_dir or default_cache_dir()
    train = TensorImageDataset(train_dir, size, cache, validate="none")
    val = TensorImageDataset(val_dir, size, cache, validate="none")
    if train.classes != val.classes:
        raise ValueError(f"{train_dir} has classes {train.classes} but {val_dir} has {val.classes}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    suffix = "" if block is None else f"@block{block}"  # a block probe is its own result file and table group
    for spec in specs:
        pools = ["hist"] if spec == COLOUR else ["cls", "mean"]
        key = spec + suffix
        paths = {p: out / f"{_slug(key)}__{p}.json" for p in pools}
        if all(p.exists() for p in paths.values()):
            written += paths.values()
            continue
        if spec == COLOUR:
            feats = {"hist": (colour_histogram_features(train.images), colour_histogram_features(val.images))}
        else:
            tr = encoder_features(spec, train.images, device=device, block=block)
            va = encoder_features(spec, val.images, device=device, block=block)
            feats = {p: (tr[p], va[p]) for p in pools}
        for pool, (tr_x, va_x) in feats.items():
            result = frozen_probe(tr_x, train.labels.numpy(), va_x, val.labels.numpy(), train.classes)
            record = {"encoder": spec, "block": block, "label": (label or spec) + suffix, "pool": pool,
                      "train": str(train_dir), "val": str(val_dir), "num_train": len(train), "num_val": len(val),
                      **result}
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
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table:
        probe(args.encoders, args.train, args.val, args.out, args.label, args.cache_dir, device=args.device,
              block=args.block)
    print(table(args.out))


if __name__ == "__main__":
    main()
