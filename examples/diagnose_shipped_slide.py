"""The figure of the README's diagnosis section: `gcmae diagnose` on the shipped CMU slide.

There are no labelled slides in this repository (2 slides, no labels), so the slide model is the stated PCam
proxy: ABMIL trained on bags of real PCam patches (negative bags: normal patches only; positive bags: 10-30 %
tumour patches) embedded by the encoder `make demo` trains (ViT-Tiny/16 at 96 px), plus a tile classifier (linear
probe, PCam tumour vs normal). Tiles are cut at 0.97 µm/px and 96 px, PCam's own scale. The CMU slide is skin,
not lymph node: the probabilities illustrate the pipeline and are not a diagnosis.

    .venv/bin/gcmae demo --out runs/demo          # the encoder (make demo)
    .venv/bin/python examples/diagnose_shipped_slide.py [--checkpoint runs/demo/pretrain/checkpoints/last.ckpt]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gcmae.encoders.loading import load_encoder
from gcmae.experiments.mil_proxy import ProxySpec, run_proxy
from gcmae.slide.diagnose import DiagnoseOptions, diagnose
from gcmae.slide.features import encoder_record
from gcmae.slide.tile_classifier import train_tile_classifier

ROOT = Path(__file__).resolve().parents[1]
PCAM = ROOT / "data" / "samples" / "pcam"
PCAM_MPP, PCAM_TILE = 0.97, 96  # PCam: 96-px patches of Camelyon16 at 10x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "runs/demo/pretrain/checkpoints/last.ckpt"))
    p.add_argument("--slide", default=str(ROOT / "data/samples/slides/cmu-1-small-region.svs"))
    p.add_argument("--out", default=str(ROOT / "runs/example_diagnose"))
    p.add_argument("--figures", default=None, help="copy the heatmaps here (e.g. docs/figures)")
    args = p.parse_args()
    out = Path(args.out)
    encoder = load_encoder(args.checkpoint)
    record = encoder_record(encoder, args.checkpoint, "mean")
    clf = out / "tile_classifier"
    train_tile_classifier(encoder, record, PCAM / "train", clf, val_dir=PCAM / "valid")
    metrics = run_proxy(encoder, "mean", PCAM / "train", PCAM / "valid", out / "proxy", ProxySpec(), record=record,
                        mil_overrides={"tile_mpp": PCAM_MPP, "tile_size": PCAM_TILE, "tile_classifier": str(clf)})
    print(f"proxy ABMIL on PCam valid bags: AUC {metrics['auc']:.3f}, balanced accuracy "
          f"{metrics['balanced_accuracy']:.3f} ({metrics['test_bags']} test bags)")
    result = diagnose(DiagnoseOptions(args.slide, metrics["model"], str(out / "diagnosis"), num_workers=0,
                                      device="cpu"))
    print(f"{Path(args.slide).name}: {result['predicted']} {result['probabilities']}")
    if args.figures:
        stem = Path(args.slide).stem
        for name in ("attention.png", "heatmap_tile_classifier.png"):
            shutil.copy(out / "diagnosis" / name, Path(args.figures) / f"diagnose_{stem}_{name}")


if __name__ == "__main__":
    main()
