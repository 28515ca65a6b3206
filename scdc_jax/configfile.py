"""Loading a pipeline's dataclass configuration from TOML, with command-line overrides."""
from __future__ import annotations

import numbers
import tomllib
import typing

from .errors import InputError, option


def _describe(hint) -> str:
    """The type ``hint`` in words, for messages."""
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], str(args[0]))
    return words.get(hint, str(hint))


def _conform(value, hint):
    """``value`` as a field typed ``hint`` holds it (an integer where a float is due becomes a
    float); TypeError when it does not fit.  ``object`` takes anything (the dataclass's
    ``validate`` judges it); booleans are no integers."""
    if hint is object:
        return value
    if typing.get_origin(hint) is list or hint is list:
        if not isinstance(value, list):
            raise TypeError
        args = typing.get_args(hint)
        return [_conform(v, args[0]) for v in value] if args else value
    if hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise TypeError


def _with_guesses(unknown: list[str], known) -> str:
    """The unknown names, each followed by the known one it most likely misspells, if any."""
    import difflib

    guesses = {k: difflib.get_close_matches(k, list(known), n=1) for k in unknown}
    return ", ".join(f"{k} (did you mean {g[0]}?)" if g else k for k, g in guesses.items())


def load_dataclass_config(cls, path: str | None, section: str, overrides: dict):
    """``cls`` built from its defaults, then the TOML file's values (top level or a ``[section]``
    table), then the non-None ``overrides``; returns ``cls(...).validate()``.

    Every value is checked against the field's type first, so ``pretrain_epochs = "twenty"`` is
    one sentence naming the key, the type and the file rather than a TypeError deep inside.
    """
    values: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(f"config file {path} does not exist.") from None
        except IsADirectoryError:
            raise InputError(f"config file {path} is a folder; give a .toml file.") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config file {path} is not valid TOML ({exc}).") from None
        values = values.get(section, values)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    tables = [k for k in unknown if isinstance(values[k], dict)]
    if tables:  # another command's file, or a misspelt table
        raise InputError(f"config file {path} has a [{tables[0]}] table, but this command reads its settings from "
                         f"[{section}] or the top level.")
    if unknown:
        raise InputError(f"config file {path} has unknown setting(s): {_with_guesses(unknown, hints)}.")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise InputError(f"unknown setting(s): {_with_guesses(unknown, hints)} (the settings are the fields of "
                         f"{cls.__name__}).")
    for source, given in (("file", values), ("override", overrides)):
        for key, value in given.items():
            try:
                given[key] = _conform(value, hints[key])
            except TypeError:
                what = f"config file {path}: {key}" if source == "file" else option(key)
                raise InputError(f"{what} must be {_describe(hints[key])}, got {value!r}.") from None
    return cls(**{**values, **overrides}).validate()
