"""Settings of the slide commands, declared once as dataclasses whose fields are the flags (gcmae.options).

`gcmae tile` takes `TileJobOptions` plus `gcmae.slide.tiling.TilingSettings`; `extract` and `tile-classifier train`
share `EncoderOptions`. Nothing heavy is imported here, so building the parser does not load torch. Spellings are the evaluation commands': `--num-workers`, `--train`/`--val`, `--checkpoint random
--encoder ENC`; the old ones (`--workers`, `--train-dir`/`--val-dir`, `--c`, `--random-init ENC`) still work, hidden,
with a one-line note.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from gcmae.config import STAIN_OPTION_CHOICES
from gcmae.options import option

POOLS = ("cls", "mean")
PRECISIONS = ("fp32", "bf16")


@dataclass(kw_only=True)
class TileJobOptions:
    """`gcmae tile`: what is tiled, where, by how many processes (the tiling itself: TilingSettings)."""

    input: str = option(positional=True, help="a slide file or a folder of slides")
    out: str = option(help="job folder: one sub-folder per slide")
    num_workers: int = option(1, help="slides tiled in parallel (processes)", deprecated=("--workers",))
    overwrite: bool = option(False, help="redo finished slides (and allow new settings)")


@dataclass(kw_only=True)
class EncoderOptions:
    """The frozen encoder of `extract` and `tile-classifier train`."""

    checkpoint: str = option("", help="encoder weights: our checkpoint, an exported encoder folder, an official "
                                      "GCMAE/MAE checkpoint, timm weights, a shipped encoder's name, or 'random' "
                                      "(a seeded random init of --encoder, the baseline) (required)")
    encoder: str | None = option(None, help="encoder preset (vit_tiny, vit_small, vit_base, ...): built for "
                                            "'random', checked against the checkpoint otherwise")
    img_size: int | None = option(None, help="encoder input size (default: the checkpoint's; for 'random' the "
                                             "data's, rounded to a multiple of the patch size)")
    patch_size: int | None = option(None, help="patch size (checked against the checkpoint; 16 for 'random')")
    seed: int = option(0, help="seed of the random init")
    pool: str = option("cls", choices=POOLS, help="feature: cls token or mean of the patch tokens")
    stain_norm: str = option("none", choices=STAIN_OPTION_CHOICES,
                             help="stain normalisation of every tile before the encoder (torchstain), fitted to "
                                  "--stain-target; tiles without a stain estimate pass through unchanged and are "
                                  "counted; pretrained: the one the encoder was pretrained with")
    stain_target: str | None = option(None, help="reference H&E image for --stain-norm (default: the shipped "
                                                 "CRC-VAL-HE-7K tile, gcmae/stain/targets/)")


@dataclass(kw_only=True)
class ExtractOptions(EncoderOptions):
    job_dir: str = option(positional=True, help="folder made by gcmae tile (one sub-folder with coords.h5 per slide)")
    batch_size: int = option(64, help="tiles per forward pass")
    num_workers: int = option(2, help="DataLoader processes reading tiles from the slide", deprecated=("--workers",))
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    shard: str | None = option(None, help="i/n: this process does every n-th slide starting at i (default: "
                                          "RANK/WORLD_SIZE from the environment, else 0/1)")
    slide: list[str] | None = option(None, help="only this slide folder (repeatable)")
    slides_dir: str | None = option(None, help="where to look for slide files that have moved")
    precision: str = option("fp32", choices=PRECISIONS,
                            help="bf16: autocast the encoder (GPUs; features still stored as float32)")


@dataclass(kw_only=True)
class TileClassifierOptions(EncoderOptions):
    train: str = option(help="labelled image folder (one sub-folder per class), e.g. data/samples/pcam/train",
                        deprecated=("--train-dir",))
    val: str | None = option(None, help="labelled folder with the same classes, for metrics",
                             deprecated=("--val-dir",))
    out: str = option(help="classifier folder (classifier.npz + classifier.json)")
    positive: str | None = option(None, help="class shown by heatmaps (default: the last class)")
    logreg_c: float = option(1.0, help="inverse L2 strength of the logistic regression", deprecated=("--c",))
    cache_dir: str | None = option(None, help="feature cache (default: OUT/feature-cache; '' disables)")
    batch_size: int = option(128, help="images per forward pass")
    num_workers: int = option(0, help="DataLoader processes reading images", deprecated=("--workers",))
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")


@dataclass(kw_only=True)
class HeatmapOptions:
    job_dir: str = option(positional=True, help="job folder with features (gcmae extract, same encoder as the "
                                                "classifier)")
    classifier: str = option(help="gcmae tile-classifier train folder")
    slide: list[str] | None = option(None, help="only this slide folder (repeatable)")
    tag: str | None = option(None, help="use features_<tag>.h5 (default: the classifier's encoder)")


@dataclass(kw_only=True)
class ExportFeaturesOptions:
    """`gcmae export-features`: a job's slide features in the folder layout of CLAM or TRIDENT."""

    job_dir: str = option(positional=True, help="job folder with features (gcmae extract)")
    out: str = option(help="output folder (clam: h5_files/ + pt_files/; trident: <mag>x_<px>px_<overlap>px_overlap/"
                           "features_<tag>/)")
    layout: str = option("clam", choices=("clam", "trident"), help="folder layout")
    tag: str | None = option(None, help="features_<tag>.h5 to export (needed when a slide has several)")


@dataclass(kw_only=True)
class MILPredictOptions:
    model: str = option(help="gcmae mil train folder")
    features: str = option(help="a bag file, a JOB_DIR or a folder of bags")
    out: str = option(help="output folder (predictions.csv, attention/)")
    labels: str | None = option(None, help="CSV slide_id,label: also metrics.json and report.md")
    tag: str | None = option(None, help="features_<tag>.h5 to use (default: the model's)")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")


@dataclass
class MILTrainOptions:
    """`gcmae mil train`: its fields are the command's flags (gcmae.options)."""

    features: str = option(help="JOB_DIR of gcmae extract, or a folder of per-slide .h5/.npz/.pt bags (file stem = "
                                "slide id)")
    labels: str = option(help="CSV with the columns slide_id,label")
    out: str = option(help="model folder (config.json, model.safetensors, history.csv)")
    tag: str | None = option(None, help="which features_<tag>.h5 when a JOB_DIR has several")
    hidden_dim: int = option(128, help="tile embedding width")
    attn_dim: int = option(128, help="attention width")
    dropout: float = option(0.25, help="dropout")
    lr: float = option(2e-4, help="AdamW learning rate")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    epochs: int = option(50, help="maximum epochs")
    patience: int = option(10, help="early stopping: epochs without improvement of the monitored value")
    monitor: str = option("loss", choices=("loss", "auc"), help="early stopping on validation loss or AUC")
    val_fraction: float = option(0.25, help="stratified validation share of the slides (0: none, the last epoch "
                                            "is kept)")
    max_tiles: int | None = option(None, help="random subset of at most this many tiles per bag and training step")
    seed: int = option(0, help="split, init and order seed")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    skip_missing: bool = option(False, help="train without labelled slides that have no bag")
    tile_mpp: float | None = option(None, help="tile µm/px, for bags that do not record it")
    tile_size: int | None = option(None, help="tile px, for bags that do not record it")
    tile_classifier: str | None = option(None, help="a gcmae tile-classifier folder to ship with the model "
                                                    "(diagnose then draws its heatmap too)")
    overwrite: bool = option(False, help="retrain even if OUT holds a finished model")
    # MIL steps are tiny: one thread avoids thread-pool overhead (~1 vs 3 ms/step)
    cpu_threads: int | None = option(1, cli=False)
    max_preload_gb: float = option(4.0, help="bags held in memory up to this size; the rest are re-read from disk "
                                             "at each use (same model, less memory)")


@dataclass
class DiagnoseOptions:
    """`gcmae diagnose`: its fields are the command's flags (gcmae.options)."""

    slide: str = option(positional=True, help="slide file")
    model: str = option(help="gcmae mil train folder")
    out: str | None = option(None, help="output folder (default: runs/diagnose/<slide stem>)")
    mpp: float | None = option(None, help="tile µm/px (default: the model's)")
    slide_mpp: float | None = option(None, help="the slide's own µm/px when its metadata lacks it")
    tile_size: int | None = option(None, help="tile px (default: the model's)")
    min_tissue: float = option(0.5, help="minimum tissue fraction of a kept tile")
    batch_size: int = option(64, help="tiles per forward pass")
    num_workers: int = option(2, help="DataLoader processes reading tiles from the slide", deprecated=("--workers",))
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    precision: str = option("fp32", choices=("fp32", "bf16"), help="bf16: autocast the encoder (GPUs)")


class RandomInitAlias(argparse.Action):
    """`--random-init ENC`, the old spelling of `--checkpoint random --encoder ENC` (hidden, with a note)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, "checkpoint", None) not in (None, "random"):
            parser.error(f"{option_string}: give either --checkpoint or {option_string}, not both")
        print(f"{parser.prog}: note: {option_string} {values} is deprecated; use --checkpoint random --encoder "
              f"{values}", file=sys.stderr)
        namespace.checkpoint, namespace.encoder = "random", values


def add_random_init_alias(parser: argparse.ArgumentParser) -> None:
    """The hidden `--random-init ENC` of the encoder options."""
    parser.add_argument("--random-init", action=RandomInitAlias, metavar="ENCODER", help=argparse.SUPPRESS)
