"""One spelling per concept across the commands (issue 11 item 11): `--num-workers`, `--train`/`--val`,
`--logreg-c`, `--checkpoint random --encoder ENC`; the old spellings still parse to the same settings, hidden from
--help, with a one-line note. `--checkpoint random` without `--img-size` takes the data's size."""
from __future__ import annotations

import json
import logging

import pytest

from gcmae.cli import build_parser, main
from gcmae.evaluate.options import FinetuneOptions, KNNOptions, resolve_options
from gcmae.experiments.commands import TransferFlags
from gcmae.options import from_args
from gcmae.slide.options import DiagnoseOptions, ExtractOptions, TileClassifierOptions, TileJobOptions

CASES = [  # (command, old argv, new argv, options class)
    (["tile", "S", "--out", "O"], ["--workers", "3"], ["--num-workers", "3"], TileJobOptions),
    (["extract", "J"], ["--random-init", "vit_tiny", "--workers", "0"],
     ["--checkpoint", "random", "--encoder", "vit_tiny", "--num-workers", "0"], ExtractOptions),
    (["tile-classifier", "train", "--out", "O", "--checkpoint", "C"],
     ["--train-dir", "T", "--val-dir", "V", "--c", "0.5", "--workers", "2"],
     ["--train", "T", "--val", "V", "--logreg-c", "0.5", "--num-workers", "2"], TileClassifierOptions),
    (["diagnose", "S", "--model", "M"], ["--workers", "0"], ["--num-workers", "0"], DiagnoseOptions),
    (["transfer", "--checkpoint", "random"], ["--workers", "2"], ["--num-workers", "2"], TransferFlags),
]


@pytest.mark.parametrize("base, old, new, cls", CASES, ids=[c[0][0] for c in CASES])
def test_old_spellings_give_the_same_settings_with_a_note(base, old, new, cls, capsys):
    parser = build_parser()
    fresh = from_args(cls, parser.parse_args([*base, *new]))
    assert capsys.readouterr().err == ""
    assert from_args(cls, parser.parse_args([*base, *old])) == fresh
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes and all("is deprecated; use --" in n for n in notes)
    assert len(notes) == sum(a.startswith("--") for a in old)


@pytest.mark.parametrize("command", [["tile"], ["extract"], ["tile-classifier", "train"], ["diagnose"],
                                     ["knn"], ["linprobe"], ["finetune"], ["transfer"]])
def test_help_shows_only_the_new_spellings(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    for old in ("--workers", "--train-dir", "--val-dir", "--random-init", " --c "):
        assert old not in text, old
    assert "--num-workers" in text


def test_evaluation_accepts_the_slide_spellings(capsys):
    args = build_parser().parse_args(["finetune", "--checkpoint", "random", "--train-dir", "T", "--val-dir", "V",
                                      "--out", "O", "--workers", "2"])
    opts = resolve_options(FinetuneOptions, args)
    assert (opts.train, opts.val, opts.num_workers) == ("T", "V", 2)
    assert capsys.readouterr().err.count("is deprecated") == 3


def test_a_required_flag_given_by_its_old_spelling_is_not_missing():
    args = build_parser().parse_args(["tile-classifier", "train", "--out", "O", "--checkpoint", "C"])
    with pytest.raises(ValueError, match="missing --train"):
        from_args(TileClassifierOptions, args)


def test_random_init_takes_the_image_size_of_the_data(pcam_pair, tmp_path, caplog):
    """PCam patches are 96 px: a random vit_tiny embeds them at 96 (not 224), and says so."""
    train, val = pcam_pair
    out = tmp_path / "knn"
    with caplog.at_level(logging.INFO, logger="gcmae"):
        assert main(["knn", "--checkpoint", "random", "--encoder", "vit_tiny", "--train", str(train), "--val",
                     str(val), "--out", str(out), "--k", "5", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.dumps(metrics).count('"img_size": 96') >= 1
    assert any("without --img-size: 96 px, from the first image of" in r.getMessage() for r in caplog.records)


def test_random_init_size_is_rounded_to_the_patch_size(tmp_path):
    from PIL import Image

    from gcmae.evaluate.common import img_size_of

    (tmp_path / "a").mkdir()
    Image.new("RGB", (100, 90)).save(tmp_path / "a" / "x.png")
    opts = KNNOptions(checkpoint="random", train=str(tmp_path), val=str(tmp_path), out="o", patch_size=16)
    assert img_size_of(opts) == 96  # 100 px -> the nearest multiple of 16
    assert img_size_of(KNNOptions(checkpoint="random", train=str(tmp_path), img_size=64)) == 64
    assert img_size_of(KNNOptions(checkpoint="ckpt.pth", train=str(tmp_path))) is None


def test_transfer_random_models_take_the_first_evaluation_sets_size(pcam_pair):
    from gcmae.evaluate.protocols import EvalSet
    from gcmae.experiments.commands import _random_sizes
    from gcmae.experiments.transfer import ModelSpec, TransferConfig

    cfg = TransferConfig(models=[ModelSpec("r", "random", encoder="vit_tiny"),
                                 ModelSpec("s", "random", encoder="vit_tiny", img_size=32)])
    cfg.eval.eval_sets = [EvalSet("pcam", str(pcam_pair[0]), str(pcam_pair[1]))]
    _random_sizes(cfg)
    assert [m.img_size for m in cfg.models] == [96, 32]


def test_checkpoint_is_required_and_exclusive_with_its_old_spelling(tmp_path, capsys):
    assert main(["extract", str(tmp_path)]) == 2
    assert "missing --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", str(tmp_path), "--checkpoint", "c.pth", "--random-init", "vit_tiny"])
    assert "not both" in capsys.readouterr().err
