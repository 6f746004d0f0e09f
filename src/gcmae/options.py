"""Command-line flags generated from a settings dataclass: one way to declare the options of every command.

Each field is a flag (`img_size` -> `--img-size`); what argparse needs beyond the type and the default lives in the
field's metadata, written with `option(...)`:

    @dataclass
    class ExtractOptions:
        job_dir: str = option(positional=True, help="folder made by gcmae tile")
        num_workers: int = option(2, help="DataLoader processes", deprecated=("--workers",))

Types: `int`, `float`, `str` (and `X | None`), `bool` (a `--flag` that sets True), `tuple[T, ...]` (one or more
values), `tuple[T, T]` (exactly two), `list[T]` (a repeatable flag; positional: zero or more values). Every flag defaults to None, meaning "not
given", so `from_args` keeps the dataclass default and callers can layer a YAML file underneath. `deprecated`
spellings still work, are hidden from --help, and print a one-line note naming the new spelling.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DeprecatedAlias", "add_arguments", "flag", "from_args", "given", "option", "option_names"]


def option(default: Any = dataclasses.MISSING, *, help: str = "", choices: Sequence[Any] | None = None,
           aliases: Sequence[str] = (), deprecated: Sequence[str] = (), positional: bool = False,
           metavar: str | None = None, exclusive: str | None = None, cli: bool = True,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line metadata.

    `aliases`: other visible spellings; `deprecated`: old spellings, hidden, with a note when used; `exclusive`:
    fields sharing this name form a mutually exclusive group; `cli=False`: a setting with no flag."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases),
            "deprecated": tuple(deprecated), "positional": positional, "metavar": metavar, "exclusive": exclusive,
            "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The flag of a field name: `img_size` -> `--img-size`."""
    return "--" + name.replace("_", "-")


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores like the new one and prints `prog: note: --old is deprecated; use --new`."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", append: bool = False,
                 **kwargs: Any) -> None:
        self.new, self.append = new, append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if self.nargs == 0:
            values = self.const
        elif self.append:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _type_kwargs(tp: Any) -> dict[str, Any]:
    """argparse keywords for a field type: action/nargs/type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported option type {tp}")
        return _type_kwargs(inner[0])
    if tp is bool:
        return {"action": "store_true"}
    if origin is tuple:
        if Ellipsis in args:
            return {"nargs": "+", "type": args[0]}
        return {"nargs": len(args), "type": args[0]}
    if origin is list:
        return {"action": "append", "type": args[0]}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"unsupported option type {tp}")


def _suffix(f: dataclasses.Field[Any], required: bool) -> str:
    """What --help adds to a field's text: `(required)`, `(default: X)`, or nothing for an empty default."""
    if required:
        return "(required)"
    if not _has_default(f):
        return ""
    default = _default(f)
    if default in (None, [], ""):
        return ""
    return f"(default: {' '.join(map(str, default)) if isinstance(default, tuple) else default})"


def add_arguments(parser: argparse.ArgumentParser, cls: type, *,
                  help_overrides: Mapping[str, str] | None = None) -> None:
    """One argument per field of `cls` (fields with `cli=False` skipped), each defaulting to None ("not given").

    Fields without a dataclass default are required; positional fields are positional arguments. `help_overrides`:
    field name -> help text where a shared field means something else for this command."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in _fields(cls):
        meta = f.metadata
        kwargs = _type_kwargs(hints[f.name])
        text = (help_overrides or {}).get(f.name, meta.get("help", ""))
        required = not _has_default(f)
        if kwargs.get("action") != "store_true":
            text = f"{text} {_suffix(f, required and not meta.get('positional'))}".strip()
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        elif "nargs" in kwargs:
            kwargs["metavar"] = "N" if kwargs["type"] in (int, float) else "VALUE"
        if meta.get("positional"):
            if kwargs.get("action") == "append":  # a positional list: zero or more values
                kwargs = {"nargs": "*", "type": kwargs["type"]}
            elif not required:
                kwargs["nargs"] = "?"
            parser.add_argument(f.name, help=text, default=None, **kwargs)
            continue
        target: Any = parser
        if meta.get("exclusive"):
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["exclusive"]]
        names = [flag(f.name), *meta.get("aliases", ())]
        # with old spellings argparse cannot tell the flag is there: from_args checks it instead
        strict = required and not meta.get("exclusive") and not meta.get("deprecated")
        target.add_argument(*names, dest=f.name, default=None, help=text, required=strict, **kwargs)
        for old in meta.get("deprecated", ()):
            _add_deprecated(parser, old, f.name, names[0], kwargs)


def _add_deprecated(parser: argparse.ArgumentParser, old: str, dest: str, new: str, kwargs: dict[str, Any]) -> None:
    extra: dict[str, Any] = {k: v for k, v in kwargs.items() if k in ("nargs", "type", "choices")}
    if kwargs.get("action") == "store_true":
        extra.update(nargs=0, const=True)
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, append=kwargs.get("action") == "append",
                        default=None, help=argparse.SUPPRESS, **extra)


def option_names(cls: type) -> list[str]:
    """The names of the fields of `cls` that are flags."""
    return [f.name for f in _fields(cls)]


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` given on the command line (not None), tuples and lists as lists."""
    out = {}
    for name in option_names(cls):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """`cls` from its defaults and the flags given (tuple fields as tuples); `extra` sets other fields.
    ValueError naming the flag when a field without a default was not given."""
    hints = typing.get_type_hints(cls)
    missing = [flag(f.name) for f in _fields(cls) if not _has_default(f) and f.name not in extra
               and getattr(args, f.name, None) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    values: dict[str, Any] = {}
    for name, value in given(cls, args).items():
        values[name] = tuple(value) if typing.get_origin(_strip_none(hints[name])) is tuple else value
    return cls(**values, **extra)


def _strip_none(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is not tuple and len(args) == 1 and type(None) in typing.get_args(tp) \
        else tp
