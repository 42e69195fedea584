"""Layered settings of a command: configs/default.toml, then `--config FILE`, then the flags given.

Every flag's own default is None ("not given"), so a value from `--config` is only replaced by a flag the
user typed; the default shown in `--help` is read from default.toml, the one place it is written.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer

from spix.configs import defaults


def resolve(section: str, config_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Settings of one command: defaults < config file < flags that were given (not None)."""
    settings = defaults(section)
    if config_file is not None:
        try:
            user = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise typer.BadParameter(f"cannot read config {config_file}: {exc}") from None
        unknown = set(user.get(section, {})) - set(settings)
        if unknown:
            raise typer.BadParameter(f"{config_file}: unknown keys in [{section}]: {sorted(unknown)}")
        settings.update(user.get(section, {}))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def shown(value: Any) -> str:
    """A default as `--help` prints it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag(section: str, key: str, help: str, *declarations: str, empty: str | None = None, **options: Any) -> Any:
    """A typer.Option for setting `key` of `section`, its default read from default.toml into the help.

    `empty` describes what an empty ("" or 0) default means, e.g. "a new folder runs/<date-time>".
    """
    value = defaults(section)[key]
    default = empty if empty is not None and value in ("", 0) else shown(value)
    return typer.Option(None, *declarations, help=f"{help.rstrip('.')} (default: {default}).", **options)


def config_flag(section: str) -> Any:
    return typer.Option(None, "--config", help=f"TOML file with a [{section}] section; flags override it.")
