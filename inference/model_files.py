"""The files a `spix infer` run reads besides the images: the trained model and the linear probe of `spix eval`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from spix.inference.settings import InferInputError
from spix.trainer.checkpoint import load_model, resolve_model
from spix.trainer.probe import LinearProbe, find_classifier


def model_for_inference(checkpoint: str) -> tuple[Path, Path, dict[str, Any]]:
    """(model.pt, run folder, model.json) of `--checkpoint` (see resolve_model); loads it once to check it."""
    weights, run_dir = resolve_model(checkpoint)
    _, meta = load_model(weights, "cpu")
    return weights, run_dir, meta


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def classifier_for_inference(classifier: str, run_dir: Path, meta: dict[str, Any]) -> tuple[Path, LinearProbe, dict[int, str]]:
    """The linear probe (`--classifier`, else the newest in the run folder) and its class names; it must fit the
    model's embedding size and give ids 0..255 (a label map is an 8-bit PNG)."""
    try:
        path = Path(classifier) if classifier else find_classifier(run_dir)
        probe = LinearProbe.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InferInputError(str(exc)) from None
    if probe.coef_.shape[1] != meta["dim"]:
        raise InferInputError(f"{path} expects {probe.coef_.shape[1]}-D features but the model gives {meta['dim']}-D")
    classes = probe.classes_
    if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() > 255:
        raise InferInputError(f"{path}: class ids must be integers in 0..255 for a label map PNG")
    meta_names = {i + 1: n for i, n in enumerate(meta.get("class_names", []))}
    names = {int(c): probe.class_names.get(int(c)) or meta_names.get(int(c), f"class {c}") for c in classes}
    return path, probe, names
