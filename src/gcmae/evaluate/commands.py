"""The `knn`, `linprobe` and `visualize` subcommands of `gcmae` (registered by gcmae.cli)."""
from __future__ import annotations

import argparse

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
