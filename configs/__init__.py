"""Every default of every spix command is written once, in default.toml; this module reads it.

Typed settings objects (dataclasses without default values) are built from a section with `build`, so
a default changed in the TOML changes what every command, library function and `--help` text uses.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import types
import typing
from importlib import resources
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that is missing or of the wrong type; one line for the user."""


@functools.cache
def default_config() -> dict[str, dict[str, Any]]:
    """The packaged default.toml (works from a wheel as well as from a checkout)."""
    return tomllib.loads(resources.files(__name__).joinpath("default.toml").read_text())


def defaults(section: str) -> dict[str, Any]:
    """A copy of one section of default.toml."""
    return dict(default_config()[section])


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """The settings dataclass `cls` from `values` (e.g. a section merged with a config file and flags).

    Every field without a value of its own must be present, and every value given must match its
    annotation (an int is accepted for a float, a list for a tuple); keys that are not fields are
    ignored, so a command's own keys may sit in the same section.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = [f.name for f in fields if f.name not in values and f.default is dataclasses.MISSING]
    if missing:
        raise SettingsError(f"{cls.__name__}: missing settings {missing}")
    return cls(**{f.name: checked(f.name, values[f.name], hints[f.name]) for f in fields if f.name in values})


def checked(name: str, value: Any, kind: Any) -> Any:
    """`value` as the annotated type, or SettingsError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return checked(name, value, option)
            except SettingsError:
                continue
        raise SettingsError(f"setting {name!r}: {value!r} is not a {kind}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"setting {name!r}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(checked(name, v, item) for v in value)
    if kind is type(None):
        if value is None:
            return None
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind in (bool, str) and isinstance(value, kind):
        return value
    raise SettingsError(f"setting {name!r}: {value!r} is not a {getattr(kind, '__name__', kind)}")
