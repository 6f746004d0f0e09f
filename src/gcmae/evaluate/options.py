"""Options of `gcmae knn`, `linprobe`, `finetune` and `visualize`: dataclass defaults <- YAML <- command line.

Every field is a command-line flag (`img_size` -> `--img-size`); a `--config` YAML file may set any of them
(unknown keys and wrong types are errors naming the key, as for pretraining configs), and flags given on the
command line win over the file.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcmae.config import STAIN_OPTION_CHOICES, ConfigError, from_dict, load_yaml
from gcmae.options import add_arguments, flag, given, option

POOLS = ("cls", "mean")
METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "auc")  # what picks the best fine-tuning epoch


@dataclass
class BaseOptions:
    checkpoint: str = option("", help="checkpoint file (ours, official GCMAE/MAE, timm state dict), `gcmae export` "
                                      "folder, a shipped encoder's name, or 'random' (required)")
    out: str = option("", help="output folder (metrics.json, report.md, PNGs) (required)")
    encoder: str | None = option(None, help="encoder preset (vit_tiny, vit_small, vit_base, ...): built for "
                                            "'random', checked against the checkpoint otherwise")
    img_size: int | None = option(None, help="input size (default: the checkpoint's; for 'random' the data's: its "
                                             "first image, rounded to a multiple of the patch size)")
    patch_size: int | None = option(None, help="patch size (default: the checkpoint's; 16 for random)")
    pool: str = option("cls", help="feature: cls token or mean of the patch tokens", choices=POOLS)
    batch_size: int = option(128, help="images per forward pass when embedding / evaluating")
    num_workers: int = option(0, help="DataLoader processes reading images", deprecated=("--workers",))
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    seed: int = option(0, help="random init / probe / t-SNE seed")


@dataclass
class CachedFeatureOptions(BaseOptions):
    """Commands that embed folders with the frozen encoder (not fine-tuning) and cache the features."""

    cache_dir: str | None = option(None, help="feature cache folder (default: OUT/feature-cache; '' to disable)")


@dataclass
class EvalOptions(BaseOptions):
    train: str = option("", help="labelled folder (one sub-folder per class): kNN reference / probe training set "
                                 "(required)", deprecated=("--train-dir",))
    val: str = option("", help="labelled folder with the same classes: query / test set (required)",
                      deprecated=("--val-dir",))


@dataclass
class StainOptions:
    """Commands whose images may be stain-normalised before the encoder (gcmae.stain)."""

    stain_norm: str = option("none", choices=STAIN_OPTION_CHOICES,
                             help="stain normalisation of every image before the encoder (torchstain; with "
                                  "augmentation, before it); pretrained: the one the encoder was pretrained with")
    stain_target: str = option("", help="reference image for --stain-norm macenko/reinhard (default: the shipped "
                                        "CRC-VAL-HE-7K tile)")


@dataclass
class KNNOptions(EvalOptions, CachedFeatureOptions, StainOptions):
    k: tuple[int, ...] = option((20, 200), help="one or more k of weighted kNN (1-NN is always added)")
    temperature: float = option(0.07, help="kNN vote temperature")
    leave_one_out: bool = option(False, help="classify every --train image against the others (its own entry "
                                             "excluded); no --val needed. Used automatically when --val is the same "
                                             "folder or holds the same files")


@dataclass
class LinprobeOptions(EvalOptions, CachedFeatureOptions, StainOptions):
    protocol: str = option("fast", choices=("fast", "paper"),
                           help="fast: logistic regression on cached features; paper: LARS + BatchNorm + linear head, "
                                "augmented")
    logreg_c: float = option(1.0, help="fast protocol: inverse regularisation strength of the logistic regression "
                                       "(on standardised features)")
    max_iter: int = option(1000, help="fast protocol: L-BFGS iterations")
    epochs: int = option(90, help="paper protocol: training epochs")
    warmup_epochs: float = option(10.0, help="paper protocol: linear warm-up epochs, then cosine")
    base_lr: float = option(0.1, help="paper protocol: lr = base_lr x probe batch / 256")
    weight_decay: float = option(0.0, help="paper protocol: LARS weight decay")
    probe_batch_size: int = option(256, help="paper protocol: training batch size")


@dataclass
class FinetuneOptions(EvalOptions, StainOptions):
    """`gcmae finetune`: GCMAE's (MAE's) end-to-end fine-tuning recipe; `batch_size` is the training batch."""

    epochs: int = option(50, help="training epochs")
    warmup_epochs: float = option(5.0, help="linear warm-up epochs (per iteration), then half-cycle cosine to min_lr")
    base_lr: float = option(1e-3, help="lr = base_lr x batch / 256")
    min_lr: float = option(1e-6, help="lr at the end of the cosine")
    layer_decay: float = option(0.75, help="layer-wise lr decay: block i gets decay^(depth - i) of the head's lr")
    weight_decay: float = option(0.05, help="AdamW weight decay (not on biases, norms, pos_embed, cls_token)")
    drop_path: float = option(0.1, help="stochastic depth rate (linearly increasing over the blocks)")
    label_smoothing: float = option(0.1, help="cross-entropy label smoothing")
    crop_scale: tuple[float, float] = option((0.08, 1.0), help="RandomResizedCrop area range (min max)")
    randaug_ops: int = option(2, help="RandAugment: operations per image (0: no RandAugment)")
    randaug_magnitude: int = option(9, help="RandAugment: magnitude (0-30)")
    reprob: float = option(0.25, help="random erasing probability (0: none; official GCMAE main_finetune.py)")
    precision: str = option("32-true", choices=("32-true", "bf16-mixed", "16-mixed"),
                            help="32-true, bf16-mixed (GPUs that support it) or 16-mixed")
    metric: str = option("balanced_accuracy", choices=METRICS,
                         help="validation metric that picks the best checkpoint")


FINETUNE_HELP = {  # shared fields that mean something else for fine-tuning
    "train": "labelled folder (one sub-folder per class): the fine-tuning training set (required)",
    "val": "labelled folder with the same classes: picks the best epoch, then is evaluated (required)",
    "batch_size": "training batch (also the evaluation batch); lr = base_lr x batch / 256",
    "pool": "classifier input: cls token, or mean of the patch tokens (+ a new LayerNorm, MAE's global pool)",
    "seed": "seed of the head init, data order, augmentations and drop path",
}


@dataclass
class VisualizeOptions(CachedFeatureOptions, StainOptions):
    data: str = option("", help="image folder to visualise; class sub-folders colour the t-SNE (required)")
    what: str = option("tsne,attention", help="comma-separated: tsne, umap, attention, reconstruction")
    num_images: int = option(6, help="attention / reconstruction: number of images")
    max_points: int = option(2000, help="t-SNE / UMAP: at most this many images (seeded subsample)")


REQUIRED = {BaseOptions: ("checkpoint", "out"), EvalOptions: ("train", "val"), VisualizeOptions: ("data",)}
VISUALS = ("tsne", "umap", "attention", "reconstruction")


def add_option_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls` (default None: 'not given'), plus --config."""
    parser.add_argument("--config", default=None, help="YAML file with any of these options (flags win)")
    add_arguments(parser, cls, help_overrides=FINETUNE_HELP if issubclass(cls, FinetuneOptions) else None)


def resolve_options(cls: type, args: argparse.Namespace) -> Any:
    """`cls` from its defaults, then the --config YAML, then the flags given; validated."""
    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    data.update(given(cls, args))
    try:
        opts = from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{args.config or 'options'}: {err}") from None
    for base, required in REQUIRED.items():
        if isinstance(opts, base):
            for name in required:
                if name == "val" and getattr(opts, "leave_one_out", False):
                    continue  # leave-one-out queries the --train folder itself
                if not getattr(opts, name):
                    raise ConfigError(f"missing {flag(name)} (or `{name}:` in the --config file)")
    for f in dataclasses.fields(opts):
        choices, value = f.metadata.get("choices"), getattr(opts, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
    if isinstance(opts, CachedFeatureOptions) and opts.cache_dir is None:  # with the run, not in the current folder
        opts.cache_dir = str(Path(opts.out) / "feature-cache")
    if isinstance(opts, VisualizeOptions):
        unknown = [w for w in opts.what.split(",") if w.strip() not in VISUALS]
        if unknown:
            raise ConfigError(f"what: unknown {', '.join(unknown)}; choose from {', '.join(VISUALS)}")
    return opts


PROTOCOL_ONLY = {"fast": ("logreg_c", "max_iter"),
                 "paper": ("epochs", "warmup_epochs", "base_lr", "weight_decay", "probe_batch_size")}


def settings(opts: Any) -> dict[str, Any]:
    """The options that apply, as a plain dict (for metrics.json and the report)."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()}
    if isinstance(opts, LinprobeOptions):
        for protocol, names in PROTOCOL_ONLY.items():
            if protocol != opts.protocol:
                for name in names:
                    values.pop(name)
    return values
