"""Command-line options declared once, on the config dataclasses.

A field declared with `option(default, help, ...)` carries its help text, its choices and its
command-line shape; `add_options` builds the argparse flags from the fields (name, type, default,
choices, help), `given_values` reads back the ones typed, `config_from_args` builds the config
itself from them, and `check_choices` refuses a value outside a field's choices, naming the flag.
A new option is one field.

    @dataclass
    class Config:
        lr: float = option(1e-2, "peak learning rate")
        optimizer: str = option("adamw", "update rule", choices=("adam", "adamw", "sgd"))

Types map to flags as argparse users expect: `int`, `float`, `str` (and `X | None`) take one
value; `tuple[int, int]` takes two; `tuple[str, ...]` one or more; `bool` is `--flag` when it
defaults to False and `--flag / --no-flag` when it defaults to True. A field without a default
(and without a `flag` of its own) is a positional argument. Parsed flags default to None, so
`given_values` tells what was typed from what was not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Choices = Sequence[Any] | Callable[[], Sequence[Any]]


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           choices: Choices | None = None, flag: str | None = None, type: Callable[[str], Any] | None = None,
           nargs: int | str | None = None, metavar: str | tuple[str, ...] | None = None, const: Any = None,
           shown: str | None = None, required: bool = False, cli: bool = True, check: bool = True,
           env: str | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    `choices` may be a callable (read when a parser is built: a registry's names); `flag`, `type`,
    `nargs`, `metavar` and `const` override what the field's type implies; `shown` is how the
    default reads in `--help` (a `{}` in it is replaced by the default), for defaults that read
    better in words; `cli=False` keeps the field off the command line; `check=False` leaves a
    value outside `choices` to the code that uses it (`check_choices` skips the field); `env`
    names an environment variable `config_from_args` reads, as text, when the flag is not given."""
    metadata = {"help": help, "choices": choices, "flag": flag, "type": type, "nargs": nargs, "metavar": metavar,
                "const": const, "shown": shown, "required": required, "cli": cli, "check": check, "env": env}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def is_positional(f: dataclasses.Field) -> bool:
    """A field without a default, and without a flag of its own, is a positional argument."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and not f.metadata.get("flag")


def dest_of(f: dataclasses.Field) -> str:
    """The argparse attribute a field's flag sets (its name, unless `flag` names it otherwise)."""
    return flag_of(f).lstrip("-").replace("-", "_")


def choices_of(f: dataclasses.Field) -> list[Any] | None:
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def cli_fields(cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of `cls` that are options, in declaration order (`only` / `skip` by name)."""
    keep = None if only is None else set(only)
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.name not in set(skip) and (keep is None or f.name in keep)]


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _shape(hint: Any) -> dict[str, Any]:
    """argparse's `type` / `nargs` / `action` for a field's type."""
    hint = _unwrap_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": "store_true"}
    if origin in (tuple, list) and args:
        many = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        return {**_shape(args[0]), "nargs": "+" if many else len(args)}
    return {"type": hint} if hint in (int, float) else {}  # strings stay strings


def _shown_default(f: dataclasses.Field) -> str | None:
    """How a field's default reads in `--help`: its `shown` words, else its environment variable
    and its value (`$CAPTCHA_TOKEN`, `$NAME, else anon`, `50051`); None when there is nothing to show."""
    shown, default, env = f.metadata.get("shown"), default_of(f), f.metadata.get("env")
    if shown is not None:
        return shown.format(default) if "{}" in shown else shown
    value = None
    if default is not None and not isinstance(default, bool) and default not in ("", ()):
        value = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
    if env:
        return f"${env}, else {value}" if value else f"${env}"
    return value


def _help(f: dataclasses.Field, shown: str | None) -> str:
    text = f.metadata.get("help", "")
    if shown is None:
        shown = _shown_default(f)
    if shown:
        text = f"{text} (default {shown})" if text else f"default {shown}"
    return text.replace("%", "%%")  # argparse formats help with %


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, only: Iterable[str] | None = None,
                skip: Iterable[str] = (), shown: dict[str, str] | None = None, show_defaults: bool = True,
                keep_defaults: bool = False) -> None:
    """Add a flag for every option field of dataclass `cls` (a positional argument for a field
    without a default).

    Flags default to None (`given_values` then tells what was typed), or to the field's default
    with `keep_defaults`. `shown` replaces how a default reads in `--help`, by field name;
    `show_defaults=False` leaves defaults out of the help (overrides whose default is elsewhere)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls, only, skip):
        spec = _shape(hints[f.name])
        if spec.get("action") == "store_true" and default_of(f) is True:
            spec = {"action": argparse.BooleanOptionalAction}
        for key in ("type", "nargs", "metavar", "const"):
            if f.metadata.get(key) is not None:
                spec[key] = f.metadata[key]
        if f.metadata.get("type") is not None:  # a value of its own type, not a switch
            spec.pop("action", None)
        if spec.get("type") is str:
            del spec["type"]
        choices = choices_of(f)
        if choices is not None:
            spec["choices"] = choices
        if f.metadata.get("required") and not is_positional(f):  # a positional is required already
            spec["required"] = True
        spec["default"] = default_of(f) if keep_defaults else None
        spec["help"] = _help(f, (shown or {}).get(f.name)) if show_defaults else f.metadata.get("help", "").replace("%", "%%")
        parser.add_argument(f.name if is_positional(f) else flag_of(f), **spec)


def given_values(args: argparse.Namespace, cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The options of `cls` that `args` holds a value for (typed, or a parser default), by flag
    destination; lists become tuples where the field is a tuple."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in cli_fields(cls, only, skip):
        value = getattr(args, dest_of(f), None)
        if value is None:
            continue
        if isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[f.name])) is tuple:
            value = tuple(value)
        values[dest_of(f)] = value
    return values


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The `cls` that `args` describes: the options given, by field name (`--grace` sets
    `grace_s`); for a field with an `env` variable whose flag was not given, the variable's text
    when it is set (an empty one stays empty, for the config to refuse); the defaults for the rest."""
    names = {dest_of(f): f.name for f in cli_fields(cls)}
    values = {names[dest]: value for dest, value in given_values(args, cls).items()}
    for f in cli_fields(cls):
        env = f.metadata.get("env")
        if f.name not in values and env and env in os.environ:
            values[f.name] = os.environ[env]
    return cls(**values)


def join_or(values: Sequence[Any]) -> str:
    """`a, b or c`."""
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_choices(config: Any) -> None:
    """Refuse a value outside a field's choices, naming the flag: `--optimizer must be adam,
    adamw or sgd, not 'x'`."""
    for f in dataclasses.fields(config):
        if not f.metadata.get("check", True):
            continue
        choices = choices_of(f)
        value = getattr(config, f.name)
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{flag_of(f)} must be {join_or(choices)}, not {value!r}")
