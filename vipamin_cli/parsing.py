"""One strict reader for every number a user writes: options, comma lists, list files.

Python's ``int()`` and ``float()`` accept far more than a number as a person writes it: ``1_0`` is
10, ``" 7 "`` is 7, ``+3`` is 3, ``١٠`` (Arabic-Indic digits) is 10, ``float("nan")`` and
``float("infinity")`` are numbers. A typo such as ``--lr 1_0`` or a list-file label ``1_0`` would
then run silently with another value. Every numeric option (Typer's ``int`` / ``float`` options,
through :class:`StrictGroup`), every comma-list option and every numeric field read from a text file
goes through :func:`parse_int` / :func:`parse_float` here, which accept plain ASCII decimal numbers
only. List options also refuse repeated values (:func:`distinct`): a repeated seed would report a
standard deviation over copies, a repeated lr or lambda would train the same configuration twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import InputError

_INT = re.compile(r"-?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
INT_FORM = "plain digits with an optional leading '-'"
FLOAT_FORM = "a plain decimal number such as 0.05, 5e-2 or -1"


def int_or_none(text: str) -> int | None:
    """The integer ``text`` spells in plain ASCII digits (optional leading '-'), else None."""
    return int(text) if isinstance(text, str) and _INT.fullmatch(text) else None


def float_or_none(text: str) -> float | None:
    """The float ``text`` spells as a plain decimal number (no nan/inf, '_', '+', spaces), else None."""
    return float(text) if isinstance(text, str) and _FLOAT.fullmatch(text) else None


def parse_int(text: str, what: str, example: Any = 42) -> int:
    """``text`` as an integer, or an InputError naming ``what`` (an option, or a file and line)."""
    value = int_or_none(text)
    if value is None:
        raise InputError(f"{what} {text!r} is not an integer ({INT_FORM})", f"write it as e.g. {example}")
    return value


def parse_float(text: str, what: str, example: Any = 0.1) -> float:
    """``text`` as a float, or an InputError naming ``what``; an integer spelling is a float too."""
    value = float_or_none(text)
    if value is None:
        raise InputError(f"{what} {text!r} is not a number ({FLOAT_FORM})", f"write it as e.g. {example}")
    return value


def distinct(values: Sequence[Any], option: str, example: str | None = None) -> None:
    """Refuse a list with a repeated value (0.1 and 1e-1 are the same value)."""
    seen: dict[Any, Any] = {}
    for value in values:
        if value in seen:
            fix = f"drop the repeat, e.g. {option} {example}" if example else f"list each value of {option} once"
            why = ("the mean and std over seeds would count copies of one run" if "seed" in option else
                   "it would run the same thing twice")
            raise InputError(f"{option} lists {value!r} twice; {why}", fix)
        seen[value] = value


# What a fix suggests for each list option (a seeds example on --k read as a seed list).
LIST_EXAMPLES = {"--lr": "0.05,0.1", "--weight-decay": "0,0.001", "--full-lr": "0.001,0.005", "--lambda": "0,0.5",
                 "--k": "2,8,32", "--seeds": "42,44,82"}


def number_list(text: str | None, option: str, kind: type = float) -> list:
    """A comma-separated list option (``--lr 0.05,0.1``): non-empty items, each a strict number, no repeats."""
    from . import validate as v

    example = LIST_EXAMPLES.get(option, "0.05,0.1" if kind is float else "2,8")
    items = _items(text, option, example)
    values = []
    for item in items:
        value = int_or_none(item) if kind is int else float_or_none(item)
        if value is None:
            form = INT_FORM if kind is int else FLOAT_FORM
            where = f"{option} '{item}'" if len(items) == 1 else f"{option} '{text}': '{item}'"
            raise InputError(f"{where} is not {'an integer' if kind is int else 'a number'} ({form})",
                             f"pass e.g. {option} {example}")
        values.append(value)
    if kind is float:
        for value in values:
            v.number(value, option, example=example)
    distinct(values, option, example)
    return values


def string_list(text: str | None, option: str) -> list[str]:
    """A comma-separated list of names (``--methods random,vipamin``): non-empty items, no repeats."""
    values = _items(text, option, "a,b")
    distinct(values, option)
    return values


def _items(text: str | None, option: str, example: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")] if text is not None else []
    if not any(items):  # "", " " and "," alike
        raise InputError(f"{option} is empty", f"pass at least one value, e.g. {option} {example}")
    if any(not item for item in items):
        raise InputError(f"{option} '{text}' has an empty item", f"separate values by single commas, e.g. "
                         f"{option} {example}")
    return items


# ----------------------------------------------------------------------------------------------------------
# The CLI's int / float options: Typer converts them with pydantic, which accepts '1_0', ' 10', '+10' and
# '10.0' for an int. StrictGroup checks the text of every such option (of every command, nested groups
# included) before Typer converts it, so a new option is covered without listing it anywhere.


def _option_kind(param: Any) -> type | None:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation if annotation in (int, float) else None


def _strict_process_value(param: Any, kind: type) -> Any:
    import typer

    original = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(text, str) and (int_or_none(text) if kind is int else float_or_none(text)) is None:
                form, example = (INT_FORM, "10") if kind is int else (FLOAT_FORM, "0.05")
                raise typer.BadParameter(f"{text!r} is not {'an integer' if kind is int else 'a number'} "
                                         f"({form}); write it as e.g. {example}", ctx=ctx, param=param)
        return original(ctx, value)

    return process_value


def make_strict(command: Any) -> None:
    """Route every int / float option of ``command`` (and of its subcommands) through the strict check."""
    for param in getattr(command, "params", []):
        kind = _option_kind(param)
        if kind is not None and not getattr(param, "_vipamin_strict", False):
            param.process_value = _strict_process_value(param, kind)
            param._vipamin_strict = True
    for sub in getattr(command, "commands", {}).values():
        make_strict(sub)


def strict_group_class() -> type:
    """Typer's group class with :func:`make_strict` applied before any argument is parsed."""
    from typer.core import TyperGroup

    class StrictGroup(TyperGroup):
        def main(self, *args: Any, **kwargs: Any) -> Any:
            make_strict(self)
            return super().main(*args, **kwargs)

    return StrictGroup


def json_int(value: Any, what: str, fix: str) -> int:
    """An integer field of a JSON file: a JSON integer only (not a string such as "1_0", not a bool
    or a float), so a hand-edited file cannot smuggle in a number ``int()`` would stretch to read."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} is {value!r}, not a JSON integer", fix)
    return value
