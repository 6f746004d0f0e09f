"""The `knn`, `linprobe` and `visualize` subcommands of `gcmae` (registered by gcmae.cli)."""
from __future__ import annotations

import argparse
import dataclasses

from gcmae.evaluate.options import KNNOptions, LinprobeOptions, VisualizeOptions, add_option_arguments, resolve_options
from gcmae.evaluate.options import FinetuneOptions


def _knn(args: argparse.Namespace) -> int:
    from gcmae.evaluate.knn_eval import run_knn

    run_knn(resolve_options(KNNOptions, args))
    return 0


def _linprobe(args: argparse.Namespace) -> int:
    from gcmae.evaluate.linprobe import run_linprobe

    run_linprobe(resolve_options(LinprobeOptions, args))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from gcmae.evaluate.finetune import run_finetune

    run_finetune(resolve_options(FinetuneOptions, args))
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from gcmae.evaluate.visualize import run_visualize

    run_visualize(resolve_options(VisualizeOptions, args))
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from gcmae.evaluate.protocols import EvalSet
    from gcmae.evaluate.transfer import ModelSpec, TransferConfig, load_transfer_config, run_transfer

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
    from gcmae.evaluate.replicate import load_replicate_config, run_replicate

    run_replicate(load_replicate_config(args.config, args.overrides))
    return 0


def _add_transfer_parsers(sub: argparse._SubParsersAction) -> None:
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


def add_evaluation_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae knn`, `gcmae linprobe` and `gcmae visualize` to the subcommands of `sub`."""
    p = sub.add_parser("knn", help="weighted kNN (k = 20, 200; T = 0.07) and 1-NN on frozen features: val vs train")
    add_option_arguments(p, KNNOptions)
    p.set_defaults(func=_knn)
    p = sub.add_parser("linprobe", help="linear probe on frozen features: fast (logistic regression on cached "
                                        "features, default) or the paper protocol (--protocol paper)")
    add_option_arguments(p, LinprobeOptions)
    p.set_defaults(func=_linprobe)
    p = sub.add_parser("finetune", help="fine-tune the whole encoder + a linear head (GCMAE's recipe: AdamW, layer "
                                        "decay, RandAugment, label smoothing); best checkpoint by a val metric")
    add_option_arguments(p, FinetuneOptions)
    p.set_defaults(func=_finetune)
    p = sub.add_parser("visualize", help="t-SNE and UMAP of features, cls attention maps, reconstructions "
                                         "(PNG + report.md)")
    add_option_arguments(p, VisualizeOptions)
    p.set_defaults(func=_visualize)
    _add_transfer_parsers(sub)
