"""The slide-level subcommands of `gcmae` (registered by gcmae.cli): tile, extract, tile-classifier, heatmap, mil,
diagnose. Each parses into its settings dataclass (gcmae.slide.options and next to the code), which is what travels
down to the work."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcmae.options import add_arguments, from_args
from gcmae.slide.options import (DiagnoseOptions, EncoderOptions, ExportFeaturesOptions, ExtractOptions,
                                 HeatmapOptions, MILPredictOptions, MILTrainOptions, TileClassifierOptions,
                                 TileJobOptions, add_random_init_alias)
from gcmae.slide.tiling import TilingSettings

if TYPE_CHECKING:
    import torch


def _data_side(data: str, job: bool) -> tuple[int, str]:
    """(image side, what it came from) of the data a random init embeds: the job's tiles or a folder's images."""
    if job:
        from gcmae.slide.coords import COORDS_FILENAME, read_coords_h5
        from gcmae.slide.features import tiled_slides

        first = tiled_slides(data)[0]
        return read_coords_h5(first / COORDS_FILENAME).grid.tile_size, f"the tiles of {first}"
    from gcmae.data.folders import first_image_side

    side, image = first_image_side(data)
    return side, f"the first image of {data} ({image.name})"


def _require_checkpoint(opts: EncoderOptions) -> EncoderOptions:
    """`opts`, or ValueError when --checkpoint is missing (it is not an argparse-required flag: --random-init ENC,
    its old spelling, sets it too)."""
    if not opts.checkpoint:
        raise ValueError("missing --checkpoint (weights, a shipped encoder's name, or 'random' with --encoder)")
    return opts


def _encoder(opts: EncoderOptions, data: str, job: bool = False) -> tuple[Any, dict[str, Any]]:
    """The encoder and its record; `--checkpoint random` without `--img-size` takes the size of `data`."""
    from gcmae.encoders.loading import RANDOM, apply_stain_option, checked_normalizer, load_encoder, random_input_size
    from gcmae.slide.features import encoder_record

    stain = checked_normalizer(opts.stain_norm, opts.stain_target)  # a bad target fails before the model loads
    if opts.checkpoint == RANDOM:
        size = opts.img_size
        if size is None:
            side, source = _data_side(data, job)
            size = random_input_size(side, opts.patch_size, source)
        enc = load_encoder(RANDOM, opts.encoder, size, opts.patch_size, opts.seed)
        apply_stain_option(enc, opts.stain_norm, stain)
        return enc, encoder_record(enc, RANDOM, opts.pool)
    enc = load_encoder(opts.checkpoint, opts.encoder, opts.img_size, opts.patch_size)
    apply_stain_option(enc, opts.stain_norm, stain)
    return enc, encoder_record(enc, opts.checkpoint, opts.pool, img_size_given=opts.img_size is not None)


def _device(name: str) -> torch.device:
    """resolve_device, with 'auto' picking cuda:LOCAL_RANK under torchrun / SLURM launchers."""
    import torch

    from gcmae.device import resolve_device

    device = resolve_device(name)
    if name == "auto" and device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def _tile(args: argparse.Namespace) -> int:
    from gcmae.slide.batch import tile_slides

    job = from_args(TileJobOptions, args)
    summary = tile_slides(Path(job.input), Path(job.out), from_args(TilingSettings, args),
                          num_workers=job.num_workers, overwrite=job.overwrite)
    rate = f", {summary.tiles_written / summary.seconds:.0f} tiles/s" if summary.seconds > 0 else ""
    print(f"tiled {summary.slides_done} slide(s), skipped {summary.slides_skipped} finished, "
          f"{summary.slides_busy} busy elsewhere, {len(summary.failures)} failed; {summary.tiles_written} tiles "
          f"in {summary.seconds:.1f} s{rate}; outputs in {job.out} (summary.json, tiling_config.yaml)")
    for path, reason in summary.warnings:
        print(f"  warning: {path}: {reason}")
    for path, reason in summary.failures:
        print(f"  failed: {path}: {reason}")
    return 1 if summary.failures and not (summary.slides_done or summary.slides_skipped) else 0


def _extract(args: argparse.Namespace) -> int:
    from gcmae.slide.features import extract_job, parse_shard, tiled_slides

    opts = _require_checkpoint(from_args(ExtractOptions, args))
    tiled_slides(opts.job_dir)  # a missing / empty job fails before the model is loaded
    shard = parse_shard(opts.shard)
    encoder, record = _encoder(opts, opts.job_dir, job=True)
    summary = extract_job(opts.job_dir, encoder, record, opts.batch_size, opts.num_workers, _device(opts.device),
                          shard, opts.slide, opts.slides_dir, opts.precision)
    print(f"features_{record['tag']}.h5: {summary}")
    for name, reason in summary.failures:
        print(f"  failed: {name}: {reason}")
    return 1 if summary.failures and not (summary.done or summary.skipped) else 0


def _tile_classifier_train(args: argparse.Namespace) -> int:
    from gcmae.data.folders import open_folder
    from gcmae.slide.tile_classifier import train_tile_classifier

    opts = _require_checkpoint(from_args(TileClassifierOptions, args))
    open_folder(opts.train)  # a bad folder fails before the model is loaded
    encoder, record = _encoder(opts, opts.train)
    cache = str(Path(opts.out) / "feature-cache") if opts.cache_dir is None else opts.cache_dir or None
    clf = train_tile_classifier(encoder, record, opts.train, opts.out, opts.positive, opts.val, opts.logreg_c, cache,
                                opts.batch_size, opts.num_workers, str(_device(opts.device)))
    val = clf.meta.get("val")
    failed = clf.meta.get("stain_failed")
    print(f"tile classifier ({', '.join(clf.classes)}; positive {clf.classes[clf.positive]}) in {opts.out}: train "
          f"accuracy {clf.meta['train_accuracy']:.4f}" + (f", val AUC {val['auc']:.4f}" if val else "")
          + (f"; stain {record['stain_id']}, images passed through unnormalised: {failed}" if failed else ""))
    return 0


def _heatmap(args: argparse.Namespace) -> int:
    from gcmae.slide.heatmap import run_heatmap

    opts = from_args(HeatmapOptions, args)
    for r in run_heatmap(opts.job_dir, opts.classifier, opts.slide, opts.tag):
        print(f"{r.slide}: {r.num_tiles} tiles, mean probability {r.mean_prob:.3f} -> {r.csv}"
              + (f", {r.png}" if r.png else ""))
    return 0


def _export_features(args: argparse.Namespace) -> int:
    from gcmae.slide.export_layouts import export_features

    opts = from_args(ExportFeaturesOptions, args)
    results = export_features(opts.job_dir, opts.out, opts.layout, opts.tag)
    done = sum(not r.skipped for r in results)
    print(f"{len(results)} slide(s) in the {opts.layout} layout under {opts.out}: {done} written, "
          f"{len(results) - done} already up to date")
    return 0


def _mil_train(args: argparse.Namespace) -> int:
    from gcmae.slide.mil_train import train_mil

    mil = train_mil(from_args(MILTrainOptions, args))
    metrics = mil.config["metrics"]
    part = metrics.get("validation") or metrics["train"]
    which = "validation" if "validation" in metrics else "train"
    auc = "n/a" if part["auc"] is None else f"{part['auc']:.4f}"
    print(f"ABMIL ({', '.join(mil.classes)}) in {mil.root}: {which} AUC {auc}, balanced accuracy "
          f"{part['balanced_accuracy']:.4f} (best epoch {mil.config['best_epoch']})")
    return 0


def _mil_predict(args: argparse.Namespace) -> int:
    from gcmae.slide.mil import predict_slides

    opts = from_args(MILPredictOptions, args)
    results = predict_slides(opts.model, opts.features, opts.out, opts.tag, opts.labels, str(_device(opts.device)))
    print(f"{len(results)} slide(s) -> {Path(opts.out) / 'predictions.csv'} (attention per tile in "
          f"{Path(opts.out) / 'attention'})")
    if opts.labels:
        m = json.loads((Path(opts.out) / "metrics.json").read_text())["results"]["abmil"]
        print(f"AUC {m['auc']}, balanced accuracy {m['balanced_accuracy']:.4f}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from gcmae.slide.diagnose import diagnose

    r = diagnose(from_args(DiagnoseOptions, args))
    probs = ", ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
    out = Path(r["settings"]["out"])
    print(f"{Path(r['slide']).name}: predicted {r['predicted']} ({probs}); report in {out / 'report.md'}")
    return 0


def add_tile_parser(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae tile` (flags: the fields of TileJobOptions and TilingSettings) to the subcommands of `sub`."""
    p = sub.add_parser("tile", help="tissue mask + tile coordinates (coords.h5) for one slide or a folder of slides")
    add_arguments(p, TileJobOptions)
    add_arguments(p, TilingSettings)
    p.set_defaults(func=_tile)


def add_slide_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae extract`, `tile-classifier`, `heatmap`, `mil` and `diagnose` to the subcommands of `sub`; their
    flags are the fields of their settings dataclasses."""
    p = sub.add_parser("extract", help="frozen-encoder features of every tile of every tiled slide of a job")
    add_arguments(p, ExtractOptions)
    add_random_init_alias(p)
    p.set_defaults(func=_extract)

    p = sub.add_parser("tile-classifier", help="a tile classifier (linear probe on frozen features) for heatmaps")
    tsub = p.add_subparsers(dest="tile_classifier_command", required=True)
    p = tsub.add_parser("train", help="fit the probe on a labelled folder (one sub-folder per class)")
    add_arguments(p, TileClassifierOptions)
    add_random_init_alias(p)
    p.set_defaults(func=_tile_classifier_train)

    p = sub.add_parser("heatmap", help="a tile classifier's probability per tile, over the slide thumbnail")
    add_arguments(p, HeatmapOptions)
    p.set_defaults(func=_heatmap)

    p = sub.add_parser("export-features", help="a job's features in the folder layout of CLAM or TRIDENT")
    add_arguments(p, ExportFeaturesOptions)
    p.set_defaults(func=_export_features)

    mil = sub.add_parser("mil", help="gated attention MIL (ABMIL) on per-slide features: train, predict")
    msub = mil.add_subparsers(dest="mil_command", required=True)
    p = msub.add_parser("train", help="train ABMIL on slide bags with labels from a CSV (slide_id,label)")
    add_arguments(p, MILTrainOptions)
    p.set_defaults(func=_mil_train)
    p = msub.add_parser("predict", help="slide probabilities + per-tile attention with a trained MIL model")
    add_arguments(p, MILPredictOptions)
    p.set_defaults(func=_mil_predict)

    p = sub.add_parser("diagnose", help="one slide end to end: tiles, features, ABMIL prediction, heatmaps, report")
    add_arguments(p, DiagnoseOptions)
    p.set_defaults(func=_diagnose)
