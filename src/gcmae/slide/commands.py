"""The slide-level subcommands of `gcmae` (registered by gcmae.cli): extract, tile-classifier, heatmap, mil,
diagnose."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _add_encoder_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    which = p.add_mutually_exclusive_group(required=required)
    which.add_argument("--checkpoint", help="encoder weights: our checkpoint, an exported encoder folder, an "
                                            "official GCMAE/MAE checkpoint or timm weights")
    which.add_argument("--random-init", metavar="ENCODER", help="a seeded random init of ENCODER (vit_tiny, "
                                                                "vit_small, vit_base, ...) as a baseline")
    p.add_argument("--encoder", default=None, help="expected encoder preset of --checkpoint (an error if not)")
    p.add_argument("--img-size", type=int, default=None, help="encoder input size (default: the checkpoint's; "
                                                               "224 for --random-init)")
    p.add_argument("--patch-size", type=int, default=None, help="patch size (checked / for --random-init)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    p.add_argument("--pool", choices=("cls", "mean"), default="cls", help="feature: cls token or mean of patches")
    add_stain_args(p)


def add_stain_args(p: argparse.ArgumentParser) -> None:
    """--stain-norm and --stain-target (the normaliser is recorded with the features / model)."""
    p.add_argument("--stain-norm", choices=("none", "macenko", "reinhard"), default="none",
                   help="stain normalisation of every tile before the encoder (torchstain), fitted to "
                        "--stain-target; tiles without a stain estimate pass through unchanged and are counted")
    p.add_argument("--stain-target", default=None, help="reference H&E image for --stain-norm (default: the "
                                                         "shipped CRC-VAL-HE-7K tile, gcmae/stain/targets/)")


def _encoder(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from gcmae.encoders.loading import RANDOM, load_encoder
    from gcmae.slide.features import encoder_record
    from gcmae.stain import make_normalizer

    stain = make_normalizer(args.stain_norm, args.stain_target)  # a bad target fails before the model loads
    if args.random_init:
        enc = load_encoder(RANDOM, args.random_init, args.img_size, args.patch_size, args.seed)
        enc.stain = stain
        return enc, encoder_record(enc, RANDOM, args.pool)
    enc = load_encoder(args.checkpoint, args.encoder, args.img_size, args.patch_size)
    enc.stain = stain
    return enc, encoder_record(enc, args.checkpoint, args.pool, img_size_given=args.img_size is not None)


def _device(name: str) -> torch.device:
    """resolve_device, with 'auto' picking cuda:LOCAL_RANK under torchrun / SLURM launchers."""
    import torch

    from gcmae.device import resolve_device

    device = resolve_device(name)
    if name == "auto" and device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def _extract(args: argparse.Namespace) -> int:
    from gcmae.slide.features import extract_job, parse_shard, tiled_slides

    tiled_slides(args.job_dir)  # a missing / empty job fails before the model is loaded
    shard = parse_shard(args.shard)
    encoder, record = _encoder(args)
    summary = extract_job(args.job_dir, encoder, record, args.batch_size, args.workers, _device(args.device),
                          shard, args.slide, args.slides_dir, args.precision)
    print(f"features_{record['tag']}.h5: {summary}")
    for name, reason in summary.failures:
        print(f"  failed: {name}: {reason}")
    return 1 if summary.failures and not (summary.done or summary.skipped) else 0


def _tile_classifier_train(args: argparse.Namespace) -> int:
    from gcmae.data.folders import open_folder
    from gcmae.slide.tile_classifier import train_tile_classifier

    open_folder(args.train_dir)  # a bad folder fails before the model is loaded
    encoder, record = _encoder(args)
    clf = train_tile_classifier(encoder, record, args.train_dir, args.out, args.positive, args.val_dir, args.c,
                                str(Path(args.out) / "feature-cache") if args.cache_dir is None else args.cache_dir or None,
                                args.batch_size, args.workers, str(_device(args.device)))
    val = clf.meta.get("val")
    failed = clf.meta.get("stain_failed")
    print(f"tile classifier ({', '.join(clf.classes)}; positive {clf.classes[clf.positive]}) in {args.out}: train "
          f"accuracy {clf.meta['train_accuracy']:.4f}" + (f", val AUC {val['auc']:.4f}" if val else "")
          + (f"; stain {record['stain_id']}, images passed through unnormalised: {failed}" if failed else ""))
    return 0


def _heatmap(args: argparse.Namespace) -> int:
    from gcmae.slide.heatmap import run_heatmap

    for r in run_heatmap(args.job_dir, args.classifier, args.slide, args.tag):
        print(f"{r.slide}: {r.num_tiles} tiles, mean probability {r.mean_prob:.3f} -> {r.csv}"
              + (f", {r.png}" if r.png else ""))
    return 0


def _mil_train(args: argparse.Namespace) -> int:
    from gcmae.slide.mil_train import MILTrainOptions, train_mil

    names = {f.name for f in dataclasses.fields(MILTrainOptions)}
    opts = MILTrainOptions(**{k: v for k, v in vars(args).items() if k in names})
    mil = train_mil(opts)
    metrics = mil.config["metrics"]
    part = metrics.get("validation") or metrics["train"]
    which = "validation" if "validation" in metrics else "train"
    auc = "n/a" if part["auc"] is None else f"{part['auc']:.4f}"
    print(f"ABMIL ({', '.join(mil.classes)}) in {mil.root}: {which} AUC {auc}, balanced accuracy "
          f"{part['balanced_accuracy']:.4f} (best epoch {mil.config['best_epoch']})")
    return 0


def _mil_predict(args: argparse.Namespace) -> int:
    from gcmae.slide.mil import predict_slides

    results = predict_slides(args.model, args.features, args.out, args.tag, args.labels, str(_device(args.device)))
    print(f"{len(results)} slide(s) -> {Path(args.out) / 'predictions.csv'} (attention per tile in "
          f"{Path(args.out) / 'attention'})")
    if args.labels:
        m = json.loads((Path(args.out) / "metrics.json").read_text())["results"]["abmil"]
        print(f"AUC {m['auc']}, balanced accuracy {m['balanced_accuracy']:.4f}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from gcmae.slide.diagnose import DiagnoseOptions, diagnose

    names = {f.name for f in dataclasses.fields(DiagnoseOptions)}
    r = diagnose(DiagnoseOptions(**{k: v for k, v in vars(args).items() if k in names}))
    probs = ", ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
    out = Path(r["settings"]["out"])
    print(f"{Path(r['slide']).name}: predicted {r['predicted']} ({probs}); report in {out / 'report.md'}")
    return 0


def _add_mil_parsers(sub: argparse._SubParsersAction) -> None:
    mil = sub.add_parser("mil", help="gated attention MIL (ABMIL) on per-slide features: train, predict")
    msub = mil.add_subparsers(dest="mil_command", required=True)
    p = msub.add_parser("train", help="train ABMIL on slide bags with labels from a CSV (slide_id,label)")
    p.add_argument("--features", required=True, help="JOB_DIR of gcmae extract, or a folder of per-slide "
                                                     ".h5/.npz/.pt bags (file stem = slide id)")
    p.add_argument("--labels", required=True, help="CSV with the columns slide_id,label")
    p.add_argument("--out", required=True, help="model folder (config.json, model.safetensors, history.csv)")
    p.add_argument("--tag", default=None, help="which features_<tag>.h5 when a JOB_DIR has several")
    for name, tp, default, hlp in (
            ("hidden-dim", int, 128, "tile embedding width"), ("attn-dim", int, 128, "attention width"),
            ("dropout", float, 0.25, ""), ("lr", float, 2e-4, "AdamW learning rate"),
            ("weight-decay", float, 1e-4, ""), ("epochs", int, 50, "maximum epochs"),
            ("patience", int, 10, "early stopping: epochs without improvement"),
            ("val-fraction", float, 0.25, "stratified validation share of the slides (0: none)"),
            ("max-tiles", int, None, "random subset of at most this many tiles per bag and training step"),
            ("seed", int, 0, "split, init and order seed"),
            ("tile-mpp", float, None, "tile µm/px, for bags that do not record it"),
            ("tile-size", int, None, "tile px, for bags that do not record it"),
            ("max-preload-gb", float, 4.0, "bags held in memory up to this size; the rest are re-read from disk "
                                           "at each use (same model, less memory)")):
        p.add_argument(f"--{name}", type=tp, default=default, help=f"{hlp} (default: {default})".strip())
    p.add_argument("--monitor", choices=("loss", "auc"), default="loss", help="early stopping on val loss or AUC")
    p.add_argument("--tile-classifier", default=None, help="a gcmae tile-classifier folder to ship with the model "
                                                           "(diagnose then draws its heatmap too)")
    p.add_argument("--skip-missing", action="store_true", help="train without labelled slides that have no bag")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="retrain even if OUT holds a finished model")
    p.set_defaults(func=_mil_train)
    p = msub.add_parser("predict", help="slide probabilities + per-tile attention with a trained MIL model")
    p.add_argument("--model", required=True, help="gcmae mil train folder")
    p.add_argument("--features", required=True, help="a bag file, a JOB_DIR or a folder of bags")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, attention/)")
    p.add_argument("--labels", default=None, help="CSV slide_id,label: also metrics.json and report.md")
    p.add_argument("--tag", default=None, help="features_<tag>.h5 to use (default: the model's)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_mil_predict)


def add_slide_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae extract`, `tile-classifier`, `heatmap`, `mil` and `diagnose` to the subcommands of `sub`."""
    p = sub.add_parser("extract", help="frozen-encoder features of every tile of every tiled slide of a job")
    p.add_argument("job_dir", help="folder made by gcmae tile (one sub-folder with coords.h5 per slide)")
    _add_encoder_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes reading tiles from the slide")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--shard", default=None, help="i/n: this process does every n-th slide starting at i "
                                                 "(default: RANK/WORLD_SIZE from the environment, else 0/1)")
    p.add_argument("--slide", action="append", default=None, help="only this slide folder (repeatable)")
    p.add_argument("--slides-dir", default=None, help="where to look for slide files that have moved")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast the encoder (GPUs; features still stored as float32)")
    p.set_defaults(func=_extract)

    p = sub.add_parser("tile-classifier", help="a tile classifier (linear probe on frozen features) for heatmaps")
    tsub = p.add_subparsers(dest="tile_classifier_command", required=True)
    p = tsub.add_parser("train", help="fit the probe on a labelled folder (one sub-folder per class)")
    p.add_argument("--train-dir", required=True, help="labelled image folder, e.g. data/samples/pcam/train")
    p.add_argument("--val-dir", default=None, help="labelled folder with the same classes, for metrics")
    p.add_argument("--out", required=True, help="classifier folder (classifier.npz + classifier.json)")
    _add_encoder_args(p)
    p.add_argument("--positive", default=None, help="class shown by heatmaps (default: the last class)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/feature-cache; '' disables)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_tile_classifier_train)

    p = sub.add_parser("heatmap", help="a tile classifier's probability per tile, over the slide thumbnail")
    p.add_argument("job_dir", help="job folder with features (gcmae extract, same encoder as the classifier)")
    p.add_argument("--classifier", required=True, help="gcmae tile-classifier train folder")
    p.add_argument("--slide", action="append", default=None, help="only this slide folder (repeatable)")
    p.add_argument("--tag", default=None, help="use features_<tag>.h5 (default: the classifier's encoder)")
    p.set_defaults(func=_heatmap)

    _add_mil_parsers(sub)

    p = sub.add_parser("diagnose", help="one slide end to end: tiles, features, ABMIL prediction, heatmaps, report")
    p.add_argument("slide", help="slide file")
    p.add_argument("--model", required=True, help="gcmae mil train folder")
    p.add_argument("--out", default=None, help="output folder (default: runs/diagnose/<slide stem>)")
    p.add_argument("--mpp", type=float, default=None, help="tile µm/px (default: the model's)")
    p.add_argument("--slide-mpp", type=float, default=None, help="the slide's own µm/px when its metadata lacks it")
    p.add_argument("--tile-size", type=int, default=None, help="tile px (default: the model's)")
    p.add_argument("--min-tissue", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast the encoder")
    p.set_defaults(func=_diagnose)
