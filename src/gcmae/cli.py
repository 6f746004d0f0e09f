"""The `gcmae` command: parse arguments, load the config, call one function per subcommand.

Every subcommand's flags are the fields of a settings dataclass (gcmae.options): here for the small commands, in
evaluate/options.py, slide/options.py and experiments/commands.py for the others. Pretraining's settings are a
YAML tree with dotted overrides (gcmae.config); its flags only name the file and how to resume.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from gcmae.config import ConfigError
from gcmae.options import add_arguments, from_args, option
from gcmae.quiet import quiet_third_party

log = logging.getLogger("gcmae")


@dataclass(kw_only=True)
class PretrainFlags:
    config: str = option(help="YAML config, e.g. configs/pretrain/gcmae_vit_base_paper.yaml")
    resume: bool = option(False, exclusive="resume",
                          help="continue from <out_dir>/checkpoints/last.ckpt; an error if there is none (without "
                               "either flag a run resumes when that file exists)")
    no_resume: bool = option(False, exclusive="resume", help="start from scratch even if a checkpoint exists")
    overrides: list[str] = option(default_factory=list, positional=True,
                                  help="dotted overrides, e.g. optim.epochs=10 data.batch_size=64")


@dataclass(kw_only=True)
class CheckDataFlags:
    folder: str = option(positional=True, help="image folder (searched recursively)")
    full: bool = option(False, help="decode every pixel (catches truncated files; slower)")
    out: str | None = option(None, help="write path,status,reason for every image file to this CSV")


@dataclass(kw_only=True)
class ExportFlags:
    checkpoint: str = option(positional=True, help="a gcmae checkpoint, official GCMAE/MAE checkpoint or timm "
                                                   "state dict")
    out: str = option(help="output folder")
    fp16: bool = option(False, help="store the weights in half precision (half the size)")


@dataclass(kw_only=True)
class DemoFlags:
    config: str = option("configs/pretrain/demo_vit_tiny_cpu.yaml", help="pretraining config")
    out: str = option("runs/demo", help="output folder")
    data: str = option("data/samples", help="folder with slides/, pcam/ and crc-val-he-7k/")
    overrides: list[str] = option(default_factory=list, positional=True,
                                  help="dotted overrides of the pretraining config")


def _pretrain(args: argparse.Namespace) -> int:
    from gcmae.config import load_pretrain_config
    from gcmae.train.pretrain import last_checkpoint, run_pretrain

    flags = from_args(PretrainFlags, args)
    cfg = load_pretrain_config(flags.config, flags.overrides)
    last = last_checkpoint(cfg)
    if flags.resume and not last.exists() and not any(last.parent.glob("epoch*.ckpt")):
        raise FileNotFoundError(f"--resume: no checkpoint to resume from in {last.parent}")
    run = run_pretrain(cfg, resume=not flags.no_resume)
    print(f"done: {run.num_images} images, outputs in {run.out_dir}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from gcmae.data.validation import scan_folder
    from gcmae.io.atomic import write_text_atomic

    flags = from_args(CheckDataFlags, args)
    report = scan_folder(Path(flags.folder), decode=flags.full)
    for check in report.checks:
        if check.error:
            print(f"rejected: {check.path}: {check.error}")
        for note in check.warnings:
            print(f"warning: {check.path}: {note}")
    print(report.summary())
    if flags.out:
        write_text_atomic(flags.out, report.to_csv())
        print(f"report written to {flags.out}")
    return 1 if report.count("rejected") else 0


def _export(args: argparse.Namespace) -> int:
    from gcmae.io.export import export_encoder

    flags = from_args(ExportFlags, args)
    out = export_encoder(flags.checkpoint, flags.out, fp16=flags.fp16)
    print(f"encoder written to {out} (load with timm.create_model('local-dir:{out}', pretrained=True))")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gcmae.demo import run_demo

    flags = from_args(DemoFlags, args)
    metrics = run_demo(flags.config, flags.out, flags.data, flags.overrides)
    print(f"demo finished in {metrics['timings']['total_s']:.0f} s; see {Path(flags.out) / 'summary.md'}")
    print(f"look at the slides with their tissue, tiles, heatmap and attention in a browser:\n"
          f"  gcmae serve {Path(flags.out) / 'tiles'}")
    return 0


def _version() -> str:
    from gcmae import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcmae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gcmae {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain GCMAE from a YAML config (resumes from out_dir if possible)")
    add_arguments(p, PretrainFlags)
    p.set_defaults(func=_pretrain)
    from gcmae.slide.commands import add_slide_parsers, add_tile_parser  # the slide commands' flags live there

    add_tile_parser(sub)

    p = sub.add_parser("check-data", help="check every image under a folder; exit code 1 if any is rejected")
    add_arguments(p, CheckDataFlags)
    p.set_defaults(func=_check_data)

    p = sub.add_parser("export", help="export the encoder of a checkpoint as model.safetensors + config.json")
    add_arguments(p, ExportFlags)
    p.set_defaults(func=_export)

    p = sub.add_parser("convert", help="official GCMAE/MAE checkpoint, timm state dict or gcmae checkpoint -> "
                                       "exported encoder folder (model.safetensors, config.json, README.md)")
    add_arguments(p, ExportFlags)
    p.set_defaults(func=_export)

    p = sub.add_parser("demo", help="tile the shipped slides, pretrain a small GCMAE, evaluate, summarise")
    add_arguments(p, DemoFlags)
    p.set_defaults(func=_demo)

    from gcmae.evaluate.commands import add_evaluation_parsers  # knn, linprobe, visualize

    add_evaluation_parsers(sub)
    from gcmae.experiments.commands import add_experiment_parsers  # transfer, replicate

    add_experiment_parsers(sub)
    add_slide_parsers(sub)  # extract, tile-classifier, heatmap, mil, diagnose
    from gcmae.serve.commands import add_serve_parser  # serve (the web viewer)

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # one handler per call, removed afterwards: main() may run many times in one process (tests, notebooks)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    quiet_third_party()
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, OSError, FloatingPointError) as err:
        print(f"gcmae {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
