"""The `gcmae` command gives clear errors (exit code 2, message naming the problem) instead of tracebacks."""
import pytest

from gcmae.cli import main


def test_bad_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  contrast_wieght: 0.1\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    assert "loss.contrast_wieght" in capsys.readouterr().err


def test_pretrain_on_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  train_dir: {tmp_path / 'empty'}\ntrainer:\n  out_dir: {tmp_path / 'out'}\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and str(tmp_path / "empty") in err


def test_pretrain_on_folder_of_corrupt_images(tmp_path, capsys):
    data = tmp_path / "bad_images"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (data / "b.png").write_text("text")
    assert main(["pretrain", "--config", "configs/pretrain/demo_vit_tiny_cpu.yaml", f"data.train_dir={data}",
                 f"trainer.out_dir={tmp_path / 'out'}"]) == 2
    assert "2 file(s) could not be read" in capsys.readouterr().err


def test_tile_a_corrupt_slide(tmp_path, capsys):
    slide = tmp_path / "broken.svs"
    slide.write_bytes(b"II*\x00" + b"\x00" * 100)
    assert main(["tile", str(slide), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken.svs" in err


def test_unknown_subcommand_exits():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_repeated_calls_do_not_stack_log_handlers(tmp_path):
    import logging

    from gcmae.cli import main

    before = len(logging.getLogger("gcmae").handlers)
    for _ in range(3):
        main(["check-data", str(tmp_path)])
    assert len(logging.getLogger("gcmae").handlers) == before


@pytest.mark.parametrize("argv, options, required", [
    (["mil", "train", "--features", "F", "--labels", "L", "--out", "O"], "gcmae.slide.mil_train:MILTrainOptions",
     {"features": "F", "labels": "L", "out": "O"}),
    (["diagnose", "S", "--model", "M"], "gcmae.slide.diagnose:DiagnoseOptions", {"slide": "S", "model": "M"}),
    (["tile", "S", "--out", "O"], "gcmae.slide.tiling:TilingSettings", {}),
    (["extract", "J", "--checkpoint", "C"], "gcmae.slide.options:ExtractOptions",
     {"job_dir": "J", "checkpoint": "C"}),
])
def test_command_line_defaults_are_the_options_defaults(argv, options, required):
    """The flags are generated from the settings dataclass: what a bare command line parses to is its defaults."""
    import importlib

    from gcmae.cli import build_parser
    from gcmae.options import from_args

    module, name = options.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert from_args(cls, build_parser().parse_args(argv)) == cls(**required)


def test_building_the_parser_does_not_import_torch():
    """`gcmae --help` stays quick: the settings dataclasses live apart from the code that needs torch."""
    import subprocess
    import sys

    code = "import sys; from gcmae.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_version(capsys):
    """Issue 11 item 11: there was no --version."""
    from gcmae import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"gcmae {__version__}"
