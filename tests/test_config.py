"""Settings layer: configs/default.toml < --config FILE < flags; typos in a config are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from spix.cli.config import default_config, resolve


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "my.toml"
    config.write_text("[preprocess]\nnum_superpixels = 300\ncompactness = 20.0\n")
    settings = resolve("preprocess", config, {"num_superpixels": 42, "compactness": None})
    assert settings["num_superpixels"] == 42, "a flag that was given wins"
    assert settings["compactness"] == 20.0, "a flag left out keeps the file's value"
    assert settings["images_per_shard"] == default_config()["preprocess"]["images_per_shard"]


def test_a_misspelt_key_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[preprocess]\nnum_superpixel = 300\n")
    with pytest.raises(typer.BadParameter, match="num_superpixel"):
        resolve("preprocess", config, {})


def test_every_command_section_is_in_the_defaults() -> None:
    assert {"preprocess", "toy", "train"} <= set(default_config())
