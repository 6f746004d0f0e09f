"""Options of `gcmae knn`, `linprobe`, `finetune` and `visualize`: dataclass defaults <- YAML <- command line.

Every field is a command-line flag (`img_size` -> `--img-size`); a `--config` YAML file may set any of them
(unknown keys and wrong types are errors naming the key, as for pretraining configs), and flags given on the
command line win over the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcmae.config import ConfigError, from_dict, load_yaml


@dataclass
class BaseOptions:
    checkpoint: str = ""  # a checkpoint file / export folder, or "random"
    out: str = ""
    encoder: str | None = None  # expected (checkpoint) or built (random) encoder preset
    img_size: int | None = None  # default: the checkpoint's, 224 for random
    patch_size: int | None = None  # default: the checkpoint's, 16 for random
    pool: str = "cls"
    batch_size: int = 128  # images per forward pass when embedding
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0


@dataclass
class CachedFeatureOptions(BaseOptions):
    """Commands that embed folders with the frozen encoder (not fine-tuning) and cache the features."""

    cache_dir: str | None = None  # default: OUT/feature-cache (never the current folder); "" disables the cache


@dataclass
class EvalOptions(BaseOptions):
    train: str = ""  # labelled folder: kNN reference set / probe training set
    val: str = ""  # labelled folder with the same classes: the query / test set


@dataclass
class StainOptions:
    """Commands whose frozen features may be stain-normalised first (gcmae.stain)."""

    stain_norm: str = "none"  # none, macenko or reinhard
    stain_target: str = ""  # reference image; "" = the shipped default target


@dataclass
class KNNOptions(EvalOptions, CachedFeatureOptions, StainOptions):
    k: tuple[int, ...] = (20, 200)  # one or more k (1-NN is always added)
    temperature: float = 0.07
    leave_one_out: bool = False  # query = reference (--train), each image's own entry excluded; --val not needed


@dataclass
class LinprobeOptions(EvalOptions, CachedFeatureOptions, StainOptions):
    protocol: str = "fast"  # "fast": logistic regression on cached features; "paper": LARS + BN + linear head
    logreg_c: float = 1.0  # fast: inverse L2 strength of the logistic regression (on standardised features)
    max_iter: int = 1000  # fast: L-BFGS iterations
    epochs: int = 90  # paper
    warmup_epochs: float = 10.0  # paper
    base_lr: float = 0.1  # paper: lr = base_lr * probe_batch_size / 256
    weight_decay: float = 0.0  # paper
    probe_batch_size: int = 256  # paper: training batch


@dataclass
class FinetuneOptions(EvalOptions):
    """`gcmae finetune`: GCMAE's (MAE's) end-to-end fine-tuning recipe; `batch_size` is the training batch."""

    epochs: int = 50
    warmup_epochs: float = 5.0
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256
    min_lr: float = 1e-6
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    randaug_ops: int = 2  # torchvision RandAugment(num_ops, magnitude); 0 disables it
    randaug_magnitude: int = 9
    reprob: float = 0.25  # random erasing probability (official GCMAE main_finetune.py); 0 disables it
    precision: str = "32-true"
    metric: str = "balanced_accuracy"  # validation metric that picks the best checkpoint


@dataclass
class VisualizeOptions(CachedFeatureOptions):
    data: str = ""  # image folder (class sub-folders colour the t-SNE)
    what: str = "tsne,attention"  # comma-separated: tsne, umap, attention, reconstruction
    num_images: int = 6  # attention / reconstruction rows
    max_points: int = 2000  # t-SNE / UMAP subsample


REQUIRED = {BaseOptions: ("checkpoint", "out"), EvalOptions: ("train", "val"), VisualizeOptions: ("data",)}
CHOICES: dict[str, tuple[str, ...]] = {"pool": ("cls", "mean"), "protocol": ("fast", "paper"),
                                       "metric": ("balanced_accuracy", "accuracy", "macro_f1", "auc"),
                                       "precision": ("32-true", "bf16-mixed", "16-mixed"),
                                       "stain_norm": ("none", "macenko", "reinhard")}
VISUALS = ("tsne", "umap", "attention", "reconstruction")
HELP = {
    "checkpoint": "checkpoint file (ours, official GCMAE/MAE, timm state dict), `gcmae export` folder, or 'random'",
    "out": "output folder (metrics.json, report.md, PNGs)",
    "encoder": "encoder preset (vit_tiny, vit_small, vit_base, ...): built for 'random', checked against the "
               "checkpoint otherwise",
    "img_size": "input size (default: the checkpoint's; 224 for random)",
    "patch_size": "patch size (default: the checkpoint's; 16 for random)",
    "pool": "feature: cls token or mean of the patch tokens",
    "cache_dir": "feature cache folder (default: OUT/feature-cache; '' to disable)",
    "device": "auto, cpu, cuda, cuda:1, ...",
    "train": "labelled folder (one sub-folder per class): kNN reference / probe training set",
    "val": "labelled folder with the same classes: query / test set",
    "k": "one or more k of weighted kNN (1-NN is always added)",
    "logreg_c": "fast protocol: inverse regularisation strength of the logistic regression",
    "what": "comma-separated: tsne, umap, attention, reconstruction",
    "data": "image folder to visualise",
    "batch_size": "images per forward pass when embedding / evaluating",
    "protocol": "fast: logistic regression on cached features; paper: LARS + BatchNorm + linear head, augmented",
    "max_iter": "fast protocol: L-BFGS iterations",
    "epochs": "paper protocol: training epochs",
    "warmup_epochs": "paper protocol: linear warm-up epochs, then cosine",
    "base_lr": "paper protocol: lr = base_lr x probe batch / 256",
    "weight_decay": "paper protocol: LARS weight decay",
    "probe_batch_size": "paper protocol: training batch size",
    "temperature": "kNN vote temperature",
    "leave_one_out": "classify every --train image against the others (its own entry excluded); no --val needed. "
                     "Used automatically when --val is the same folder or holds the same files",
    "seed": "random init / probe / t-SNE seed",
    "num_images": "attention / reconstruction: number of images",
    "max_points": "t-SNE: at most this many images (seeded subsample)",
    "stain_norm": "stain normalisation of every image before the encoder (torchstain; fast protocol / kNN)",
    "stain_target": "reference image for --stain-norm (default: the shipped CRC-VAL-HE-7K tile)",
}
CLASS_HELP: dict[type, dict[str, str]] = {  # per-command help where a shared field name means something else
    FinetuneOptions: {
        "train": "labelled folder (one sub-folder per class): the fine-tuning training set",
        "val": "labelled folder with the same classes: picks the best epoch, then is evaluated",
        "batch_size": "training batch (also the evaluation batch); lr = base_lr x batch / 256",
        "epochs": "training epochs",
        "warmup_epochs": "linear warm-up epochs (per iteration), then half-cycle cosine to min_lr",
        "base_lr": "lr = base_lr x batch / 256",
        "min_lr": "lr at the end of the cosine",
        "layer_decay": "layer-wise lr decay: block i gets decay^(depth - i) of the head's lr",
        "weight_decay": "AdamW weight decay (not on biases, norms, pos_embed, cls_token)",
        "drop_path": "stochastic depth rate (linearly increasing over the blocks)",
        "label_smoothing": "cross-entropy label smoothing",
        "crop_scale": "RandomResizedCrop area range (min max)",
        "randaug_ops": "RandAugment: operations per image (0: no RandAugment)",
        "randaug_magnitude": "RandAugment: magnitude (0-30)",
        "reprob": "random erasing probability (0: none)",
        "pool": "classifier input: cls token, or mean of the patch tokens (+ a new LayerNorm, MAE's global pool)",
        "precision": "32-true, bf16-mixed (GPUs that support it) or 16-mixed",
        "metric": "validation metric that picks the best checkpoint",
        "seed": "seed of the head init, data order, augmentations and drop path",
    },
}


def _help(cls: type) -> dict[str, str]:
    merged = dict(HELP)
    for owner in reversed(cls.__mro__):
        merged.update(CLASS_HELP.get(owner, {}))
    return merged


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_option_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls` (default None: 'not given'), plus --config."""
    parser.add_argument("--config", default=None, help="YAML file with any of these options (flags win)")
    hints = typing.get_type_hints(cls)
    help_text = _help(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [tp_ for tp_ in typing.get_args(tp) if tp_ is not type(None)]
        base = args[0] if args and typing.get_origin(tp) is not tuple else tp
        required = any(f.name in names and issubclass(cls, owner) for owner, names in REQUIRED.items())
        suffix = "(required)" if required else "" if f.default is None else f"(default: {f.default})"
        kwargs: dict[str, Any] = {"default": None, "help": f"{help_text.get(f.name, '')} {suffix}".strip()}
        if base is bool:
            kwargs["action"] = "store_true"
            kwargs["help"] = help_text.get(f.name, "")
        elif typing.get_origin(tp) is tuple:
            items = typing.get_args(tp)
            kwargs.update(nargs="+" if Ellipsis in items else len(items), type=items[0], metavar="N")
        elif base is not bool:
            kwargs["type"] = base
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        parser.add_argument(_flag(f.name), **kwargs)


def resolve_options(cls: type, args: argparse.Namespace) -> Any:
    """`cls` from its defaults, then the --config YAML, then the flags given; validated."""
    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(cls)}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = list(value) if isinstance(value, (list, tuple)) else value
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
                    raise ConfigError(f"missing {_flag(name)} (or `{name}:` in the --config file)")
    for name, choices in CHOICES.items():
        value = getattr(opts, name, None)
        if value is not None and value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    if isinstance(opts, CachedFeatureOptions) and opts.cache_dir is None:  # with the run, not in the current folder
        opts.cache_dir = str(Path(opts.out) / "feature-cache")
    if isinstance(opts, LinprobeOptions) and opts.protocol == "paper" and opts.stain_norm != "none":
        raise ConfigError("stain_norm applies to frozen features (fast protocol, kNN); the paper protocol trains on "
                          "augmented images and does not apply it")
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
