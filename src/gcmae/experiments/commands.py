"""The `transfer` and `replicate` subcommands of `gcmae` (registered by gcmae.cli); their flags are the fields of
`TransferFlags` and `ReplicateFlags` (gcmae.options). The configs themselves are YAML trees."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gcmae.config import STAIN_OPTION_CHOICES
from gcmae.options import add_arguments, from_args, option

if TYPE_CHECKING:
    from gcmae.experiments.transfer import TransferConfig


@dataclass(kw_only=True)
class TransferFlags:
    """`gcmae transfer`: a YAML config and/or one model and evaluation sets given on the command line; flags
    given win over the config's `eval` section."""

    config: str | None = option(None, help="YAML with `out`, `models` (method, checkpoint, pretrain_set, ...) and "
                                           "`eval`")
    checkpoint: str | None = option(None, help="one model to evaluate (added to the config's models); 'random' "
                                               "for an untrained encoder (with --encoder)")
    method: str = option("gcmae", help="the model's name in the table")
    pretrain_set: str = option("unknown", help="name of the data it was pretrained on")
    eval: list[str] | None = option(None, metavar="NAME=TRAIN[,VAL]",
                                    help="an evaluation set (repeatable); without VAL: 4-fold stratified "
                                         "cross-validation")
    cv_folds: int | None = option(None, metavar="N",
                                  help="folds of the stratified cross-validation of sets without VAL (default: 4); "
                                       "every class needs >= N images")
    out: str | None = option(None, help="output folder (default: runs/transfer)")
    encoder: str | None = option(None, help="encoder preset: built for 'random', checked otherwise")
    img_size: int | None = option(None, help="input size (default: the checkpoint's; for 'random' the first "
                                             "evaluation set's, rounded to a multiple of the patch size)")
    patch_size: int | None = option(None, help="patch size (default: the checkpoint's; 16 for 'random')")
    pool: str | None = option(None, choices=("cls", "mean"), help="feature: cls token or mean of the patch tokens")
    num_workers: int | None = option(None, help="DataLoader processes reading images", deprecated=("--workers",))
    device: str | None = option(None, help="auto, cpu, cuda, cuda:1, ...")
    cache_dir: str | None = option(None, help="feature cache folder (default: OUT/feature-cache; '' to disable)")
    stain_norm: str | None = option(None, choices=STAIN_OPTION_CHOICES,
                                    help="stain normalisation before the frozen encoder (default: none; pretrained: "
                                         "the one each model was pretrained with)")
    stain_target: str | None = option(None, help="reference image for --stain-norm (default: the shipped target)")
    seed: int = option(0, help="seed of the model given by --checkpoint")


@dataclass(kw_only=True)
class ReplicateFlags:
    config: str = option(help="e.g. configs/replicate/pcam_cpu.yaml")
    overrides: list[str] = option(default_factory=list, positional=True,
                                  help="key=value overrides of the replicate config, e.g. seeds=[0]")


def _random_sizes(cfg: TransferConfig) -> None:
    """Random-init models without an input size take the first evaluation set's image size."""
    from gcmae.data.folders import first_image_side
    from gcmae.encoders.loading import RANDOM, random_input_size

    for i, spec in enumerate(cfg.models):
        if spec.checkpoint == RANDOM and spec.img_size is None and cfg.eval.eval_sets:
            folder = cfg.eval.eval_sets[0].train
            side, image = first_image_side(folder)
            size = random_input_size(side, spec.patch_size, f"the first image of {folder} ({image.name})")
            cfg.models[i] = dataclasses.replace(spec, img_size=size)


def _transfer(args: argparse.Namespace) -> int:
    from gcmae.evaluate.protocols import EvalSet
    from gcmae.experiments.transfer import ModelSpec, TransferConfig, load_transfer_config, run_transfer

    flags = from_args(TransferFlags, args)
    cfg = load_transfer_config(flags.config) if flags.config else TransferConfig()
    if flags.checkpoint:
        cfg.models.append(ModelSpec(flags.method, flags.checkpoint, flags.pretrain_set, flags.seed, flags.encoder,
                                    flags.img_size, flags.patch_size))
    cfg.eval.eval_sets += [EvalSet.parse(spec) for spec in flags.eval or []]
    if flags.cv_folds is not None:  # every set without a VAL folder
        cfg.eval.eval_sets = [s if s.val else dataclasses.replace(s, cv_folds=flags.cv_folds)
                              for s in cfg.eval.eval_sets]
    for name in ("out", "pool", "num_workers", "device", "cache_dir", "stain_norm", "stain_target"):
        if getattr(flags, name) is not None:
            setattr(cfg if name == "out" else cfg.eval, name, getattr(flags, name))
    _random_sizes(cfg)
    run_transfer(cfg)
    print(f"outputs in {cfg.out} (transfer.csv, transfer.md, models/*/metrics.json)")
    return 0


def _replicate(args: argparse.Namespace) -> int:
    from gcmae.experiments.replicate import load_replicate_config, run_replicate

    flags = from_args(ReplicateFlags, args)
    run_replicate(load_replicate_config(flags.config, flags.overrides))
    return 0


def add_experiment_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae transfer` and `gcmae replicate` to the subcommands of `sub`."""
    p = sub.add_parser("transfer", help="probe encoders pretrained on one dataset on other labelled datasets "
                                        "(kNN, 1-NN, linear probe): one row per pretrain set, method, eval set")
    add_arguments(p, TransferFlags)
    p.set_defaults(func=_transfer)
    p = sub.add_parser("replicate", help="the paper's comparison under one budget: pretrain GCMAE, MAE, "
                                         "contrast-only, random init over seeds; kNN + linear probe + transfer "
                                         "table (mean ± std) and bar chart")
    add_arguments(p, ReplicateFlags)
    p.set_defaults(func=_replicate)
