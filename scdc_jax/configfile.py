"""Loading a pipeline's dataclass configuration from TOML, with command-line overrides."""
from __future__ import annotations

import dataclasses
import tomllib

from .errors import InputError


def load_dataclass_config(cls, path: str | None, section: str, overrides: dict):
    """``cls`` built from its defaults, then the TOML file's values (top level or a ``[section]``
    table), then the non-None ``overrides``; returns ``cls(...).validate()``."""
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
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"config file {path} has unknown setting(s): {', '.join(unknown)}.")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values).validate()
