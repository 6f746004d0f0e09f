"""Typed configuration: dataclasses filled from YAML plus dotted command-line overrides.

Unknown keys and wrong types are errors that name the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# gcmae.stain.CHOICES, kept here so that reading a config does not import torch (a test checks they agree)
STAIN_CHOICES = ("none", "macenko", "reinhard")
PRETRAINED_STAIN = "pretrained"  # --stain-norm of commands that take an encoder: the one its pretraining applied
STAIN_OPTION_CHOICES = (*STAIN_CHOICES, PRETRAINED_STAIN)

PATHOLOGY_MEAN = (0.6790, 0.5053, 0.6690)
PATHOLOGY_STD = (0.1916, 0.2040, 0.1565)


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class ModelConfig:
    encoder: str = "vit_base"  # a preset of gcmae.models.vit.ENCODER_PRESETS
    img_size: int = 224
    patch_size: int = 16
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.5
    norm_pix_loss: bool = True
    drop_path: float = 0.0


@dataclass
class LossConfig:
    reconstruction_weight: float = 1.0
    contrast_weight: float = 0.1  # 0 gives plain MAE
    num_negatives: int = 8192  # K; capped by the dataset size
    temperature: float = 0.07
    bank_momentum: float = 0.5
    negatives: str = "per_sample"  # "per_sample" (official NPID) or "shared" (one draw per batch)
    # Variants of the global-contrast term; the defaults are the official GCMAE semantics.
    objective: str = "nce"  # "nce" (official: NPID's NCE, uniform noise) or "infonce" (softmax over 1 + K)
    z_estimate: str = "first_batch"  # NCE normaliser Z: "first_batch" (official) or "running" (mean over steps)
    z_momentum: float = 0.99  # with z_estimate=running: Z <- m Z + (1 - m) batch estimate
    contrast_warmup_epochs: float = 0.0  # ramp the contrast weight linearly from 0 over these epochs
    # What the masked view is contrasted with: "memory_bank" (official GCMAE: NPID bank, objective/z_* apply) or
    # "two_view" (a variant: a second augmented, independently masked view of the same batch; SimCLR's NT-Xent
    # over the batch, no bank; needs data.in_memory).
    contrast: str = "memory_bank"
    projection_dim: int = 0  # > 0: a 2-layer MLP head (embed -> 512 -> this) before the contrast; 0: none (official)


@dataclass
class DataConfig:
    train_dir: str = ""
    batch_size: int = 128  # per device
    num_workers: int = 8
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    mean: tuple[float, float, float] = PATHOLOGY_MEAN
    std: tuple[float, float, float] = PATHOLOGY_STD
    validate: str = "header"  # "header" (open every file), "full" (decode every file) or "none"
    # Decode the whole folder once into a uint8 tensor (cached under cache_dir) and augment whole batches on the
    # training device: no per-epoch decoding. Needed for rotate90 and stain_jitter.
    in_memory: bool = False
    cache_dir: str = ""  # "" = $XDG_CACHE_HOME/gcmae (~/.cache/gcmae)
    rotate90: bool = False  # random vertical flips and 90-degree rotations (with hflip: all 8 symmetries)
    stain_jitter: float = 0.0  # HED stain jitter strength (0 = off); see gcmae.data.batch_augment
    # SimCLR colour distortion (gcmae.data.colour_jitter): strength s in [0, 1.25] (0 = off; SimCLR's is 1),
    # applied to each image with probability colour_jitter_p, then grayscale with probability grayscale
    colour_jitter: float = 0.0
    colour_jitter_p: float = 0.8
    grayscale: float = 0.0
    # Stain normalisation of every training image, once, before augmentation (needs in_memory): "none",
    # "macenko" or "reinhard", fitted to stain_target ("" = the shipped default target, gcmae/stain/targets).
    # Extract features from such an encoder with the same `--stain-norm` (and `--stain-target`).
    stain_norm: str = "none"
    stain_target: str = ""


@dataclass
class OptimConfig:
    base_lr: float = 1e-3  # lr = base_lr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    epochs: int = 80
    warmup_epochs: float = 40.0
    accumulate_grad_batches: int = 1


@dataclass
class TrainerConfig:
    out_dir: str = "runs/pretrain"
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = 1  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several GPUs / nodes
    precision: str = "32-true"  # "auto": bf16-mixed where this device runs it faster (measured), else 32-true
    log_every_n_steps: int = 10
    deterministic: bool = False
    progress_bar: bool = True
    # resume even when the run folder was trained on other data or another architecture (normally refused)
    force_resume: bool = False
    # also keep checkpoints/kept/epochNNN.ckpt after every n-th epoch, to probe a run along its schedule (0: off)
    keep_every_n_epochs: int = 0


@dataclass
class MonitorConfig:
    """Weighted kNN accuracy on a labelled folder, at the end of every `every_n_epochs` epoch."""

    train_dir: str = ""  # labelled reference set (empty: no monitor)
    val_dir: str = ""
    every_n_epochs: int = 1
    k: int = 200
    temperature: float = 0.07
    pool: str = "cls"  # "cls" or "mean" (mean of patch tokens)
    batch_size: int = 256


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def validate(self) -> None:
        if not 0.0 <= self.model.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio must be in [0, 1), got {self.model.mask_ratio}")
        if self.model.mask_ratio == 0.0 and self.loss.reconstruction_weight > 0:
            raise ConfigError("model.mask_ratio is 0, so nothing is reconstructed: set loss.reconstruction_weight=0")
        if self.loss.reconstruction_weight == 0 and self.loss.contrast_weight == 0:
            raise ConfigError("both loss.reconstruction_weight and loss.contrast_weight are 0: nothing to train")
        if self.loss.negatives not in ("per_sample", "shared"):
            raise ConfigError(f"loss.negatives must be 'per_sample' or 'shared', got {self.loss.negatives!r}")
        if self.loss.objective not in ("nce", "infonce"):
            raise ConfigError(f"loss.objective must be 'nce' or 'infonce', got {self.loss.objective!r}")
        if self.loss.contrast not in ("memory_bank", "two_view"):
            raise ConfigError(f"loss.contrast must be 'memory_bank' or 'two_view', got {self.loss.contrast!r}")
        if self.loss.contrast == "two_view" and not self.data.in_memory:
            raise ConfigError("loss.contrast=two_view augments tensor batches twice: set data.in_memory=true")
        if self.loss.projection_dim < 0:
            raise ConfigError(f"loss.projection_dim must be >= 0, got {self.loss.projection_dim}")
        if self.loss.z_estimate not in ("first_batch", "running"):
            raise ConfigError(f"loss.z_estimate must be 'first_batch' or 'running', got {self.loss.z_estimate!r}")
        d = self.data
        if (d.rotate90 or d.stain_jitter or d.colour_jitter or d.grayscale) and not d.in_memory:
            raise ConfigError("data.rotate90, data.stain_jitter, data.colour_jitter and data.grayscale run on tensor "
                              "batches: set data.in_memory=true")
        if not 0 <= d.colour_jitter <= 1.25:
            raise ConfigError(f"data.colour_jitter must be in [0, 1.25], got {d.colour_jitter}")
        if not (0 <= d.colour_jitter_p <= 1 and 0 <= d.grayscale <= 1):
            raise ConfigError(f"data.colour_jitter_p and data.grayscale are probabilities in [0, 1], got "
                              f"{d.colour_jitter_p} and {d.grayscale}")
        if d.stain_norm not in STAIN_CHOICES:
            raise ConfigError(f"data.stain_norm must be one of {', '.join(STAIN_CHOICES)}, got {d.stain_norm!r}")
        if d.stain_norm != "none" and not d.in_memory:
            raise ConfigError("data.stain_norm normalises the decoded images once: set data.in_memory=true")
        if d.stain_target and d.stain_norm == "none":
            raise ConfigError(f"data.stain_target {d.stain_target} given with data.stain_norm=none")
        if d.stain_norm != "none" and (self.monitor.train_dir or self.monitor.val_dir):
            raise ConfigError("the kNN monitor reads raw images, not the stain-normalised ones data.stain_norm trains "
                              "on: leave monitor.train_dir / monitor.val_dir empty and probe the checkpoints with "
                              "--stain-norm afterwards")
        if self.data.stain_jitter < 0:
            raise ConfigError(f"data.stain_jitter must be >= 0, got {self.data.stain_jitter}")
        if self.data.validate not in ("header", "full", "none"):
            raise ConfigError(f"data.validate must be 'header', 'full' or 'none', got {self.data.validate!r}")
        if self.trainer.keep_every_n_epochs < 0:
            raise ConfigError(f"trainer.keep_every_n_epochs must be >= 0, got {self.trainer.keep_every_n_epochs}")
        if self.monitor.pool not in ("cls", "mean"):
            raise ConfigError(f"monitor.pool must be 'cls' or 'mean', got {self.monitor.pool!r}")
        if self.model.img_size % self.model.patch_size:
            raise ConfigError(
                f"model.img_size {self.model.img_size} is not a multiple of model.patch_size {self.model.patch_size}"
            )


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only int->float, list->tuple and numbers that YAML 1.1
    reads as strings (`3e-4`, `1e5`: no dot) to float."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{key}.")
    if origin is list or (origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)} ({where} accepts: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config as a nested dict. A top-level `base: other.yaml` (relative to this file's folder) is read
    first and this file's values are merged over it, section by section; lists and scalars are replaced whole."""
    return load_yaml_and_bases(path)[0]


def load_yaml_and_bases(path: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """`load_yaml`, and the files it read: `path` first, then its base, the base's base..."""
    return _load_yaml_with_bases(Path(path), ())


def _load_yaml_with_bases(path: Path, children: tuple[Path, ...]) -> tuple[dict[str, Any], list[Path]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if "base" not in data:
        return data, [path]
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must be the file name of another config, got {base!r}")
    base_path = path.parent / base
    chain = (*children, path.resolve())
    if base_path.resolve() in chain:
        names = " -> ".join(p.name for p in (*chain, base_path))
        raise ConfigError(f"{path}: base {base!r} makes a cycle ({names})")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config not found: {base_path}")
    base_data, base_files = _load_yaml_with_bases(base_path, chain)
    return _merge(base_data, data), [path, *base_files]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a pretraining config: defaults <- YAML file <- overrides; validated."""
    data, files = load_yaml_and_bases(path) if path else ({}, [])
    apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(PretrainConfig, data)
    except ConfigError as err:
        bases = f" (read over its base {', '.join(str(f) for f in files[1:])})" if len(files) > 1 else ""
        raise ConfigError(f"{path or 'config'}{bases}: {err}") from None
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
