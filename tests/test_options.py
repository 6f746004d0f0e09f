"""gcmae.options: flags generated from a dataclass (types, bool flags, tuples, lists, choices, aliases, deprecated
spellings, positional and required fields, exclusive groups)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from gcmae.options import add_arguments, from_args, given, option, option_names


@dataclass
class Demo:
    job_dir: str = option(positional=True, help="a folder")
    out: str = option(help="output")
    size: int = option(224, help="px")
    scale: float | None = option(None, help="a float or nothing")
    name: str = option("a", choices=("a", "b"), help="pick one")
    verbose: bool = option(False, help="talk")
    k: tuple[int, ...] = option((20, 200), help="one or more")
    pair: tuple[float, float] = option((0.1, 1.0), help="exactly two")
    slide: list[str] | None = option(None, help="repeatable", deprecated=("--only",))
    num_workers: int = option(1, help="processes", aliases=("-j",), deprecated=("--workers",))
    overwrite: bool = option(False, help="redo", deprecated=("--force",))
    mpp: float | None = option(None, exclusive="resolution")
    magnification: float | None = option(None, exclusive="resolution")
    internal: int = option(3, cli=False)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="t")
    add_arguments(parser, Demo)
    return parser.parse_args(argv)


def test_defaults_stay_the_dataclass_defaults():
    opts = from_args(Demo, _parse(["JOB", "--out", "o"]))
    assert opts == Demo("JOB", "o")
    assert "internal" not in option_names(Demo) and opts.internal == 3
    assert given(Demo, _parse(["JOB", "--out", "o"])) == {"job_dir": "JOB", "out": "o"}


def test_types_bools_tuples_lists_and_choices():
    opts = from_args(Demo, _parse(["J", "--out", "o", "--size", "96", "--scale", "0.5", "--name", "b", "--verbose",
                                   "--k", "1", "5", "--pair", "0.2", "0.9", "--slide", "x", "--slide", "y"]))
    assert (opts.size, opts.scale, opts.name, opts.verbose) == (96, 0.5, "b", True)
    assert opts.k == (1, 5) and isinstance(opts.k, tuple) and opts.pair == (0.2, 0.9)
    assert opts.slide == ["x", "y"]
    for bad in (["--size", "x"], ["--name", "c"], ["--pair", "1"], ["--mpp", "1", "--magnification", "20"]):
        with pytest.raises(SystemExit):
            _parse(["J", "--out", "o", *bad])


def test_required_and_positional_fields():
    with pytest.raises(SystemExit):
        _parse(["J"])  # --out missing
    with pytest.raises(SystemExit):
        _parse(["--out", "o"])  # the positional missing


def test_help_names_defaults_and_hides_deprecated_spellings(capsys):
    parser = argparse.ArgumentParser(prog="t")
    add_arguments(parser, Demo)
    text = parser.format_help()
    assert "--num-workers" in text and "-j" in text and "(default: 1)" in text and "(required)" in text
    assert "--workers" not in text and "--force" not in text and "--only" not in text


def test_aliases_and_deprecated_spellings_store_the_same_field(capsys):
    new = from_args(Demo, _parse(["J", "--out", "o", "--num-workers", "4", "--overwrite", "--slide", "a"]))
    assert capsys.readouterr().err == ""
    assert from_args(Demo, _parse(["J", "--out", "o", "-j", "4", "--overwrite", "--slide", "a"])) == new
    old = from_args(Demo, _parse(["J", "--out", "o", "--workers", "4", "--force", "--only", "a"]))
    assert old == new
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["t: note: --workers is deprecated; use --num-workers",
                     "t: note: --force is deprecated; use --overwrite",
                     "t: note: --only is deprecated; use --slide"]
    mixed = from_args(Demo, _parse(["J", "--out", "o", "--slide", "a", "--only", "b"]))
    assert mixed.slide == ["a", "b"]


def test_unsupported_types_are_rejected():
    @dataclass
    class Bad:
        x: dict[str, int] = option(None)

    with pytest.raises(TypeError, match="unsupported"):
        add_arguments(argparse.ArgumentParser(), Bad)


def test_a_positional_list_takes_zero_or_more_values():
    @dataclass(kw_only=True)
    class WithOverrides:
        config: str = option(help="yaml")
        overrides: list[str] = option(default_factory=list, positional=True)

    parser = argparse.ArgumentParser()
    add_arguments(parser, WithOverrides)
    assert from_args(WithOverrides, parser.parse_args(["--config", "c"])) == WithOverrides(config="c")
    assert from_args(WithOverrides, parser.parse_args(["--config", "c", "a=1", "b=2"])).overrides == ["a=1", "b=2"]
