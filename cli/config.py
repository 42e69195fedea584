"""Layered settings: configs/default.toml, then `--config FILE`, then explicit flags."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import typer


def default_config() -> dict[str, Any]:
    """The packaged configs/default.toml (works from a wheel as well as from a checkout)."""
    text = resources.files("spix.configs").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def resolve(section: str, config_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Settings of one command: defaults < config file < flags that were given (not None)."""
    settings = dict(default_config().get(section, {}))
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
