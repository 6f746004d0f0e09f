"""A simulated second lab: does stain normalisation keep a frozen-feature tile classifier working under a colour shift?

No labelled set from a second lab ships with gcmae (PCam mixes two centres without naming them, CRC is one centre),
so the other lab is simulated on real tiles: PCam valid re-rendered with other stain vectors and other stain
amounts, one draw per seed applied to every tile (a lab's dyes and protocol are the same for all its slides). A
logistic probe is fit on frozen features of PCam train as scanned and scored on PCam valid as scanned and as "the
other lab", without and with Macenko normalisation of both sides to the shipped target (issue 14).

    python -m gcmae.experiments.stain_shift --out runs/stain_shift ENCODER [ENCODER ...] [--seeds 0 1 2]

ENCODER as in `gcmae.experiments.pcam_probe` (a checkpoint, a shipped name, `random:vit_tiny:16:0`,
`colour-histogram`). One JSON per encoder in --out, written atomically and skipped when present.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcmae.data.batch_augment import _RGB_FROM_HED, hed_to_rgb, rgb_to_hed
from gcmae.data.in_memory import TensorImageDataset, default_cache_dir, stain_normalize_images
from gcmae.evaluate.frozen_probe import colour_histogram_features, logistic_probe
from gcmae.experiments.pcam_probe import COLOUR, _slug, encoder_features, mean_sd
from gcmae.io.atomic import write_text_atomic
from gcmae.stain.normalizer import StainNormalizer, make_normalizer
from gcmae.stain.stats import angle_deg, lab_moments, od_stain_vectors

log = logging.getLogger(__name__)


def simulated_lab(seed: int, strength: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb_from_hed (3, 3), amounts (3,)): the H and E optical-density vectors each moved by Gaussian noise of
    sd `strength` per component (kept positive, original length), H and E amounts scaled by U(1 - s, 1 + s)."""
    g = torch.Generator().manual_seed(seed)
    vectors = _RGB_FROM_HED.float().clone()
    moved = (vectors[:2] + torch.randn(2, 3, generator=g) * strength).clamp_min(0.02)
    vectors[:2] = moved / moved.norm(dim=1, keepdim=True) * vectors[:2].norm(dim=1, keepdim=True)
    amounts = torch.ones(3)
    amounts[:2] = torch.empty(2).uniform_(1 - strength, 1 + strength, generator=g)
    return vectors, amounts


def render(images: torch.Tensor, lab: tuple[torch.Tensor, torch.Tensor], chunk: int = 512) -> torch.Tensor:
    """uint8 (N, 3, H, W) tiles re-rendered with the simulated lab's stain vectors and amounts."""
    vectors, amounts = lab
    out = torch.empty_like(images)
    for i in range(0, len(images), chunk):
        hed = rgb_to_hed(images[i : i + chunk].float() / 255, clamp=False) * amounts.view(1, 3, 1, 1)
        out[i : i + chunk] = (hed_to_rgb(hed, vectors) * 255).round().to(torch.uint8)
    return out


def shift_size(before: torch.Tensor, after: torch.Tensor, n: int = 64) -> dict[str, float]:
    """How far a rendering moved the tiles (medians over up to n tiles): the angle between the Macenko H and E
    vectors before and after, and the CIELAB distance between the mean colours (Delta E*ab of the means)."""
    h, e, de = [], [], []
    for i in np.linspace(0, len(before) - 1, min(n, len(before))).astype(int):
        a, b = before[i].permute(1, 2, 0).numpy(), after[i].permute(1, 2, 0).numpy()
        va, vb = od_stain_vectors(a), od_stain_vectors(b)
        if va is not None and vb is not None:
            h.append(angle_deg(va[0], vb[0]))
            e.append(angle_deg(va[1], vb[1]))
        de.append(float(np.linalg.norm(lab_moments(a)[0] - lab_moments(b)[0])))
    return {"h_angle_deg": statistics.median(h) if h else float("nan"),
            "e_angle_deg": statistics.median(e) if e else float("nan"), "lab_mean_delta_e": statistics.median(de)}


def _features(spec: str, images: torch.Tensor, stain: StainNormalizer | None = None) -> dict[str, np.ndarray]:
    """`stain`: how `images` were normalised, so an encoder pretrained on normalised images warns only on raw ones."""
    if spec == COLOUR:
        return {"hist": colour_histogram_features(images)}
    return encoder_features(spec, images, stain=stain)


def run(spec: str, train: TensorImageDataset, val: TensorImageDataset, seeds: list[int], train_n: int,
        strength: float, normalizer: StainNormalizer) -> dict[str, Any]:
    """Balanced accuracies of one encoder: as scanned / other lab, without / with Macenko, per pool and seed."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:train_n]
    tr_imgs, tr_y = train.images[pick], train.labels[pick].numpy()
    va_y = val.labels.numpy()
    tr_norm, tr_failed = stain_normalize_images(tr_imgs, normalizer, progress=False)
    va_norm, va_failed = stain_normalize_images(val.images, normalizer, progress=False)
    feats = {"none": (_features(spec, tr_imgs), _features(spec, val.images)),
             "macenko": (_features(spec, tr_norm, normalizer), _features(spec, va_norm, normalizer))}
    pools = list(feats["none"][0])
    probes = {(n, p): logistic_probe(feats[n][0][p], tr_y, feats[n][1][p], va_y, train.classes)
              for n in feats for p in pools}
    result: dict[str, Any] = {"encoder": spec, "num_train": int(train_n), "num_val": len(val), "strength": strength,
                              "stain": normalizer.id, "passed_through": {"train": tr_failed, "val": va_failed},
                              "as_scanned": {f"{n}/{p}": probes[n, p]["balanced_accuracy"] for n, p in probes},
                              "labs": []}
    for seed in seeds:
        other = render(val.images, simulated_lab(seed, strength))
        other_norm, other_failed = stain_normalize_images(other, normalizer, progress=False)
        lab: dict[str, Any] = {"seed": seed, "shift": shift_size(val.images, other), "passed_through": other_failed}
        for n, imgs in (("none", other), ("macenko", other_norm)):
            f = _features(spec, imgs, normalizer if n == "macenko" else None)
            for p in pools:
                clf_x, clf_y = feats[n][0][p], tr_y
                lab[f"{n}/{p}"] = logistic_probe(clf_x, clf_y, f[p], va_y, train.classes)["balanced_accuracy"]
        log.info("%s lab %d: %s", spec, seed, {k: round(v, 3) for k, v in lab.items() if "/" in k})
        result["labs"].append(lab)
    return result


def figure(images: torch.Tensor, seeds: list[int], strength: float, normalizer: StainNormalizer, path: Path,
           count: int = 6) -> Path:
    """The same tiles as scanned and as each simulated lab (rows), before and after Macenko (column pairs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = images[torch.linspace(0, len(images) - 1, count).long()]
    rows = [("as scanned", tiles)] + [(f"lab {s}", render(tiles, simulated_lab(s, strength))) for s in seeds]
    fig, axes = plt.subplots(len(rows), 2 * count, figsize=(2 * count * 1.1, len(rows) * 1.25))
    for r, (name, imgs) in enumerate(rows):
        normed, _ = stain_normalize_images(imgs, normalizer, progress=False)
        for c in range(count):
            for k, im in enumerate((imgs[c], normed[c])):
                ax = axes[r, 2 * c + k]
                ax.imshow(im.permute(1, 2, 0).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title("Macenko" if k else "raw", fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: balanced accuracy as scanned and under the simulated labs (mean ± sd over seeds)."""
    rows = ["| encoder | pool | stain norm | as scanned | other lab (mean ± sd) | drop |", "|---|---|---|---:|---:|---:|"]
    for r in results:
        for key, scanned in r["as_scanned"].items():
            norm, pool = key.split("/")
            vals = [lab[key] for lab in r["labs"]]
            rows.append(f"| {r['encoder']} | {pool} | {norm} | {scanned:.3f} | {mean_sd(vals)} | "
                        f"{scanned - statistics.fmean(vals):+.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoders", nargs="+")
    p.add_argument("--train", default="../shared/data/pcam/train")
    p.add_argument("--val", default="../shared/data/pcam/valid")
    p.add_argument("--out", type=Path, required=True, help="folder of result JSON files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one simulated lab per seed")
    p.add_argument("--train-n", type=int, default=4000, help="train tiles for the probe (a fixed random subset)")
    p.add_argument("--strength", type=float, default=0.3, help="sd of the stain-vector noise and half-range of the amounts")
    p.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/gcmae)")
    p.add_argument("--figure", type=Path, help="also save the same valid tiles as scanned / per lab, raw / Macenko")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = args.cache_dir or default_cache_dir()
    train = TensorImageDataset(args.train, 96, cache, validate="none")
    val = TensorImageDataset(args.val, 96, cache, validate="none")
    normalizer = make_normalizer("macenko")
    assert normalizer is not None
    args.out.mkdir(parents=True, exist_ok=True)
    if args.figure:
        figure(val.images, args.seeds, args.strength, normalizer, args.figure)
    results = []
    for spec in args.encoders:
        # the file name carries every setting the numbers depend on: a re-run with other settings recomputes
        key = f"{spec}|{args.train}|{args.val}|{args.seeds}|{args.train_n}|{args.strength}|{normalizer.id}"
        path = args.out / f"{_slug(spec)}-{_slug(key)[-8:]}.json"
        if not path.exists():
            record = run(spec, train, val, args.seeds, min(args.train_n, len(train)), args.strength, normalizer)
            write_text_atomic(path, json.dumps(record, indent=1) + "\n")
        results.append(json.loads(path.read_text()))
    print(table(results))


if __name__ == "__main__":
    main()
