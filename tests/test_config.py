"""Settings: configs/default.toml is the one place a default is written; < --config FILE < flags."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from helpers import run_spix
from spix.cli.config import resolve, shown
from spix.configs import SettingsError, build, default_config, defaults
from spix.pipeline.preprocess import PreprocessParams
from spix.trainer import model as trainer_model
from spix.trainer.config import TrainConfig, make_train_config
from spix.trainer.evaluate import EvalSettings

COMMANDS = {"preprocess": "preprocess", "toy": "make-toy-data", "train": "train", "eval": "eval",
            "infer": "infer", "download": "download ade20k", "export": "export"}
NOT_FLAGS = {"train": {"weight_decay", "min_purity", "scale_range", "shuffle_window", "prefetch_batches", "val_max_images", "bn_images", "max_failures"},
             "eval": {"max_superpixels_per_image", "min_purity", "max_pairs_per_image"},
             "infer": {"smooth_radius", "feature_eps", "layer_eps", "seed", "basis_images"}}  # config-file only


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


def test_every_command_has_a_section() -> None:
    assert set(COMMANDS) <= set(default_config())


@pytest.mark.parametrize("cls,section", [(PreprocessParams, "preprocess"), (EvalSettings, "eval")])
def test_typed_settings_are_built_from_their_section_alone(cls: type, section: str) -> None:
    built = build(cls, defaults(section))
    for field in dataclasses.fields(cls):
        if field.name in defaults(section):
            assert getattr(built, field.name) == defaults(section)[field.name], field.name
        else:  # facts of the data or of this spix, not settings: they carry their own value
            assert field.default is not dataclasses.MISSING, f"{cls.__name__}.{field.name} has no setting and no value"


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bf16_autocast_on_cpu_only_where_the_cpu_has_native_bf16(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(trainer_model, "cpu_runs_bf16", lambda: native_bf16)
    values = {**defaults("train"), "gpu": False}
    assert make_train_config({**values, "amp": True}).amp is native_bf16, "emulated bf16 is slower than float32"
    assert make_train_config({**values, "amp": False}).amp is False


def test_train_settings_come_from_the_section_and_auto_picks_by_device() -> None:
    values = {**defaults("train"), "gpu": False}
    config = make_train_config(values)
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(values), "every field is a setting"
    assert config.lr == defaults("train")["lr"] and config.batch_size == defaults("train")["batch_size"]
    on_gpu = make_train_config({**values, "preset": "auto", "crop": 0, "gpu": True})
    on_cpu = make_train_config({**values, "preset": "auto", "crop": 0, "gpu": False})
    assert (on_gpu.preset, on_gpu.crop) == ("paper", 224), "the paper's model and crop on GPUs"
    assert (on_cpu.preset, on_cpu.crop) == ("cpu", 128)
    assert make_train_config({**values, "preset": "tiny", "crop": 96, "gpu": True}).crop == 96, "a crop given is kept"
    assert make_train_config({**values, "gpu": True, "amp": True}).amp is True
    assert make_train_config({**values, "gpu": True, "amp": False}).amp is False, "--no-amp: float32 everywhere"
    with pytest.raises(ValueError, match="more strips than the 128-pixel crop"):
        make_train_config({**values, "crop": 0, "mosaic": 129})  # checked against the crop "auto" picks
    assert make_train_config({**values, "crop": 0, "mosaic": 128}).mosaic == 128
    assert make_train_config({**values, "scale_range": [1, 1]}).scale_range == (1.0, 1.0)
    for scales in ([0.5], [1.5, 0.5], [0, 1], 1.0, "0.8"):
        with pytest.raises(ValueError, match="scale_range"):
            make_train_config({**values, "scale_range": scales})


def test_wrong_and_missing_settings_are_one_clear_error() -> None:
    with pytest.raises(SettingsError, match="num_superpixels"):
        build(PreprocessParams, {**defaults("preprocess"), "num_superpixels": "many"})
    with pytest.raises(SettingsError, match="compactness"):
        build(PreprocessParams, {"num_superpixels": 5, "max_side": 0})
    assert build(PreprocessParams, {**defaults("preprocess"), "compactness": 12}).compactness == 12.0, "an int is a float"


def option_helps(help_text: str) -> dict[str, str]:
    """Each option of a --help page -> its own help text (whitespace collapsed), read from the option lines
    and their continuation lines, so a flag named inside another flag's help is never mistaken for it."""
    helps: dict[str, str] = {}
    option = None
    for line in help_text.splitlines():
        start = re.match(r"  (?:-\w, )?(--[\w-]+)", line)
        if start:
            option = start.group(1)
            helps[option] = line[start.end():]
        elif option and line.startswith("   "):
            helps[option] += " " + line
        else:
            option = None
    return {name: re.sub(r"\s+", " ", text).strip() for name, text in helps.items()}


@pytest.mark.parametrize("section", sorted(COMMANDS))
def test_help_shows_the_defaults_of_default_toml(section: str) -> None:
    result = run_spix(*COMMANDS[section].split(), "--help", env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout and "{" not in result.stdout.splitlines()[0]
    helps = option_helps(result.stdout)
    for key, value in defaults(section).items():
        if key in NOT_FLAGS.get(section, set()) or value in ("", 0) or key in ("address", "num_cpus", "checkpoint", "out"):
            continue
        option = "--" + key.replace("_", "-")
        assert option in helps, (section, key)
        match = re.search(r"\(default: ([^)]*)\)", helps[option])
        assert match, (section, key, helps[option])
        assert match.group(1) == shown(value), (section, key, match.group(1))


def test_a_default_edited_in_a_config_file_changes_what_the_command_does(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("[toy]\ntrain = 3\nval = 1\nmin_side = 32\nmax_side = 40\n")
    result = run_spix("make-toy-data", str(tmp_path / "toy"), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "toy" / "images" / "training").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "toy" / "images" / "validation").glob("*.jpg"))) == 1
