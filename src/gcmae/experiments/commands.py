"""The `transfer` and `replicate` subcommands of `gcmae` (registered by gcmae.cli)."""
from __future__ import annotations

import argparse
import dataclasses


def _transfer(args: argparse.Namespace) -> int:
    from gcmae.evaluate.protocols import EvalSet
    from gcmae.experiments.transfer import ModelSpec, TransferConfig, load_transfer_config, run_transfer

    cfg = load_transfer_config(args.config) if args.config else TransferConfig()
    if args.checkpoint:
        cfg.models.append(ModelSpec(args.method, args.checkpoint, args.pretrain_set, args.seed, args.encoder,
                                    args.img_size, args.patch_size))
    cfg.eval.eval_sets += [EvalSet.parse(spec) for spec in args.eval or []]
    if args.cv_folds is not None:  # every set without a VAL folder
        cfg.eval.eval_sets = [s if s.val else dataclasses.replace(s, cv_folds=args.cv_folds)
                              for s in cfg.eval.eval_sets]
    for name in ("out", "pool", "device", "cache_dir", "stain_norm", "stain_target"):
        if getattr(args, name) is not None:
            target = cfg if name == "out" else cfg.eval
            setattr(target, name, getattr(args, name))
    run_transfer(cfg)
    print(f"outputs in {cfg.out} (transfer.csv, transfer.md, models/*/metrics.json)")
    return 0


def _replicate(args: argparse.Namespace) -> int:
    from gcmae.experiments.replicate import load_replicate_config, run_replicate

    run_replicate(load_replicate_config(args.config, args.overrides))
    return 0


def add_experiment_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae transfer` and `gcmae replicate` to the subcommands of `sub`."""
    p = sub.add_parser("transfer", help="probe encoders pretrained on one dataset on other labelled datasets "
                                        "(kNN, 1-NN, linear probe): one row per pretrain set, method, eval set")
    p.add_argument("--config", help="YAML with `out`, `models` (method, checkpoint, pretrain_set, ...) and `eval`")
    p.add_argument("--checkpoint", help="one model to evaluate (added to the config's models); 'random' for an "
                                        "untrained encoder (with --encoder)")
    p.add_argument("--method", default="gcmae", help="the model's name in the table (default: gcmae)")
    p.add_argument("--pretrain-set", default="unknown", help="name of the data it was pretrained on")
    p.add_argument("--eval", action="append", metavar="NAME=TRAIN[,VAL]",
                   help="an evaluation set (repeatable); without VAL: 4-fold stratified cross-validation")
    p.add_argument("--cv-folds", type=int, metavar="N",
                   help="folds of the stratified cross-validation of sets without VAL (default: 4); every class "
                        "needs >= N images")
    p.add_argument("--out", help="output folder (default: runs/transfer)")
    p.add_argument("--encoder")
    p.add_argument("--img-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--pool", choices=("cls", "mean"))
    p.add_argument("--device")
    p.add_argument("--cache-dir")
    p.add_argument("--stain-norm", choices=("none", "macenko", "reinhard"),
                   help="stain normalisation before the frozen encoder (default: none)")
    p.add_argument("--stain-target", help="reference image for --stain-norm (default: the shipped target)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_transfer)
    p = sub.add_parser("replicate", help="the paper's comparison under one budget: pretrain GCMAE, MAE, "
                                         "contrast-only, random init over seeds; kNN + linear probe + transfer "
                                         "table (mean ± std) and bar chart")
    p.add_argument("--config", required=True, help="e.g. configs/replicate/pcam_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the replicate config, e.g. seeds=[0]")
    p.set_defaults(func=_replicate)
