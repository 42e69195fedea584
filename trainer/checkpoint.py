"""Training state and the final model: what is saved, and loading it back safely (weights_only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spix.pipeline.files import write_atomic, write_text_atomic
from spix.trainer.config import PRESETS, RUNS_DIR
from spix.trainer.model import FeatureExtractor

STATE_FILE = "state.pt"  # inside every Ray Train checkpoint folder
MODEL_FILE = "model.pt"
MODEL_META = "model.json"
PAPER_HEAD_KERNEL = 3  # the head of models whose model.json predates "head_kernel"


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be loaded."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def save_training_state(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int, config: dict[str, Any],
    feature_basis: dict[str, Any] | None = None,
) -> None:
    """`epoch` is the number of finished epochs; `feature_basis` the run-wide principal axes (see embedding.py)."""
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "config": config}
    write_atomic(folder / STATE_FILE, lambda handle: torch.save({**state, "feature_basis": feature_basis}, handle))


def load_training_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def write_final_model(run_dir: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """RUN/model.pt (state dict) and RUN/model.json: all inference needs, without Ray."""
    write_atomic(run_dir / MODEL_FILE, lambda handle: torch.save(state_dict, handle))
    write_text_atomic(run_dir / MODEL_META, json.dumps(meta, indent=1))


def embedding_dim(state_dict: dict[str, torch.Tensor]) -> int:
    """The embedding size D of a FeatureExtractor's weights: the channels of its last BN."""
    return int(state_dict["head.1.weight"].shape[0])


def find_model_files(run_or_file: Path) -> tuple[Path, Path]:
    """(model.pt, model.json) from a run folder or a model.pt path."""
    weights = run_or_file / MODEL_FILE if run_or_file.is_dir() else run_or_file
    meta = weights.with_name(MODEL_META)
    if not weights.is_file() or not meta.is_file():
        raise CheckpointError(f"{run_or_file}: no finished model ({MODEL_FILE} and {MODEL_META}); train one with `spix train`")
    return weights, meta


def load_model(run_or_file: Path, device: str | torch.device = "cpu") -> tuple[FeatureExtractor, dict[str, Any]]:
    """The trained FeatureExtractor in eval mode and its metadata (preset, widths, preprocessing)."""
    weights, meta_path = find_model_files(run_or_file)
    meta = json.loads(meta_path.read_text())
    model = FeatureExtractor(tuple(meta["widths"]), meta["dim"], meta.get("head_kernel", PAPER_HEAD_KERNEL))
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, KeyError) as exc:
        raise CheckpointError(f"{weights}: cannot load weights ({exc})") from None
    return model.to(device).eval(), meta


def resolve_model(checkpoint: str | Path, runs_dir: Path = RUNS_DIR) -> tuple[Path, Path]:
    """(model.pt, its run folder) for `--checkpoint` of `spix eval` and `spix infer`: a run folder, a model.pt,
    or "" for the most recently finished run under runs/."""
    if str(checkpoint):
        weights, _ = find_model_files(Path(checkpoint))
        return weights.resolve(), weights.resolve().parent
    finished = sorted(runs_dir.glob(f"*/{MODEL_FILE}"), key=lambda p: p.stat().st_mtime)
    if not finished:
        raise CheckpointError(f"no finished run under {runs_dir}/; train one with `spix train` or pass --checkpoint")
    return finished[-1].resolve(), finished[-1].resolve().parent


def model_meta(preset: str, dim: int, preprocess_params: dict[str, Any], class_names: list[str], train_config: dict[str, Any]) -> dict[str, Any]:
    """model.json: what rebuilds the network (widths, head kernel, embedding size) and how it was made."""
    return {
        "preset": preset,
        "widths": list(PRESETS[preset].widths),
        "head_kernel": PRESETS[preset].head_kernel,
        "dim": dim,
        "preprocess": preprocess_params,
        "class_names": class_names,
        "train": train_config,
    }
