"""Do the tiles of other labs get closer to the stain target?

For real tiles of four sources (the two shipped slides, read at level 0 on a 224-px grid, tiles with > 60 % dark
pixels; PCam `valid` patches, resized to 224; CRC-VAL-HE-7K tiles) prints, before and after Macenko and Reinhard
normalisation to the shipped target, the mean distance to the target of
- the optical-density stain vectors (haematoxylin and eosin, Macenko's estimate in NumPy: angle in degrees), and
- the CIELAB per-channel means (scikit-image; Euclidean distance, i.e. ΔE*ab of the mean colour),
both computed independently of torchstain, plus how many tiles were passed through (no stain estimate). With
``--figure PATH`` it also draws the same tiles before/after (docs/figures/stain_before_after.png).

    .venv/bin/python benchmarks/stain_stats.py --figure docs/figures/stain_before_after.png   # ~1 min on 1 core
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _machine import ROOT, run_report, table  # first: puts src/ on sys.path

import numpy as np
import torch
from PIL import Image

SAMPLES = ROOT / "data" / "samples"


def slide_tiles(name: str, n: int, size: int = 224) -> list[np.ndarray]:
    import openslide

    tiles: list[np.ndarray] = []
    with openslide.OpenSlide(str(SAMPLES / "slides" / name)) as slide:
        w, h = slide.dimensions
        for y in range(0, h - size, size):
            for x in range(0, w - size, size):
                rgb = np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB")).copy()
                if (rgb.mean(axis=2) < 200).mean() > 0.6:
                    tiles.append(rgb)
    step = max(1, len(tiles) // n)
    return tiles[::step][:n]


def image_tiles(files: list[Path], size: int = 224) -> list[np.ndarray]:
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)).copy())
    return out


def sources(n: int) -> dict[str, list[np.ndarray]]:
    pcam = [f for c in ("0_negative", "1_metastatic") for f in sorted((SAMPLES / "pcam/valid" / c).glob("*.jpg"))[:n // 2]]
    crc = sorted((SAMPLES / "crc-val-he-7k").glob("*/*.png"))
    return {"CMU slide (skin, Aperio)": slide_tiles("cmu-1-small-region.svs", n),
            "TCGA slide (head & neck, frozen)": slide_tiles("tcga-cr-7395-01a-01-ts1.svs", n),
            "PCam valid (lymph node)": image_tiles(pcam),
            "CRC-VAL-HE-7K (colon)": image_tiles(crc)}


def distances(tiles: list[np.ndarray], he_t: np.ndarray, lab_t: np.ndarray) -> tuple[float, float, float]:
    from gcmae.stain.stats import angle_deg, lab_moments, od_stain_vectors

    h, e, lab = [], [], []
    for t in tiles:
        he = od_stain_vectors(t)
        if he is not None:
            h.append(angle_deg(he[0], he_t[0]))
            e.append(angle_deg(he[1], he_t[1]))
        lab.append(float(np.linalg.norm(lab_moments(t)[0] - lab_t)))
    return float(np.mean(h)), float(np.mean(e)), float(np.mean(lab))


def figure(path: Path, target: np.ndarray, picks: list[tuple[str, np.ndarray]], outs: dict[str, list]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["original", *outs]
    fig, axes = plt.subplots(len(rows), len(picks) + 1, figsize=(1.45 * (len(picks) + 1), 1.5 * len(rows)))
    for r, row in enumerate(rows):
        for c in range(len(picks) + 1):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                if r == 0:
                    ax.imshow(target)
                    ax.set_title("target", fontsize=7)
                else:
                    ax.axis("off")
                continue
            ax.imshow(picks[c - 1][1] if r == 0 else outs[row][c - 1])
            if r == 0:
                ax.set_title(picks[c - 1][0], fontsize=6)
            if c == 1:
                ax.set_ylabel(row, fontsize=7)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    from gcmae.io.atomic import atomic_path

    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im, atomic_path(path) as tmp:  # 256 adaptive colours: a small file for the docs
        im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(tmp, format="png", optimize=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=16, help="tiles per slide / PCam (CRC: all 32)")
    p.add_argument("--figure", default=None, help="PNG of the same tiles before/after")
    p.add_argument("--quick", action="store_true", help="4 tiles per slide / PCam (run_all.py --quick)")
    p.add_argument("--device", default="cpu", help="ignored: the statistics are computed on the CPU (run_all.py)")
    args = p.parse_args(argv)
    if args.quick:
        args.tiles = 4
    torch.set_num_threads(1)
    from gcmae.stain import DEFAULT_TARGET, StainNormalizer
    from gcmae.stain.stats import lab_moments, od_stain_vectors

    with Image.open(DEFAULT_TARGET) as im:
        target = np.asarray(im.convert("RGB")).copy()
    he_t, lab_t = od_stain_vectors(target), lab_moments(target)[0]
    norms = {m: StainNormalizer.fit(None, m) for m in ("macenko", "reinhard")}
    print(f"target {DEFAULT_TARGET.name}; " + ", ".join(repr(n) for n in norms.values()) + "\n")
    rows, picks, outs = [], [], {m: [] for m in norms}
    for name, tiles in sources(args.tiles).items():
        x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()
        results = {m: n.normalize(x) for m, n in norms.items()}
        after = {m: list(r.images.permute(0, 2, 3, 1).numpy()) for m, r in results.items()}
        b = distances(tiles, he_t, lab_t)
        for m in norms:
            a = distances(after[m], he_t, lab_t)
            rows.append([name if m == "macenko" else "", str(len(tiles)), m, f"{b[0]:.1f} -> {a[0]:.1f}",
                         f"{b[1]:.1f} -> {a[1]:.1f}", f"{b[2]:.1f} -> {a[2]:.1f}", str(results[m].num_failed)])
        for i in (0, len(tiles) // 2):
            picks.append((name.split(" (")[0], tiles[i]))
            for m in norms:
                outs[m].append(after[m][i])
    print(table(["source", "tiles", "method", "H angle (deg)", "E angle (deg)", "LAB mean dist", "passed through"],
                rows))
    if args.figure:
        figure(Path(args.figure), target, picks, outs)
        print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    run_report(main)
