"""The inputs of `spix infer`: which files of the folder are images, and each one decoded, upright and shrunk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spix.inference.settings import InferInputError
from spix.pipeline.dataset import is_image_name
from spix.pipeline.imageio import BadInputError, decode_rgb_oriented, shrink_to_max_side


def default_out(folder: Path) -> Path:
    """FOLDER_spix next to FOLDER: outside the folder, so a re-run never reads its own outputs."""
    folder = folder.resolve()
    if folder.parent == folder:
        raise InferInputError(f"{folder} has no parent folder for the default output; pass --out")
    return folder.parent / f"{folder.name}_spix"


def list_inputs(folder: Path, out: Path) -> tuple[list[str], int]:
    """Sorted '/'-separated paths (relative to `folder`) of every image file below it, and the count of other files.

    The output folder is never searched, even when it lies inside `folder`.
    """
    images, others = [], 0
    out = out.resolve()
    for directory, subdirs, files in os.walk(folder):
        here = Path(directory)
        subdirs[:] = [d for d in subdirs if (here / d).resolve() != out]
        for file in files:
            if is_image_name(file):
                images.append((here / file).relative_to(folder).as_posix())
            else:
                others += 1
    return sorted(images), others


def file_stamp(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file, None when it cannot be read: tells whether a broken input changed since."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def decode_input(path: str, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read and decode one file, upright and shrunk to `max_side` -> (rgb, original (H, W)).

    Any way the file can be broken is a BadInputError, whose message is the reason recorded for the skip.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        rgb = decode_rgb_oriented(data)
    except BadInputError:
        raise
    except Exception as exc:  # a decoder failing in an unforeseen way still only costs this file
        raise BadInputError(f"unexpected {type(exc).__name__}: {exc}") from exc
    return shrink_to_max_side(rgb, max_side), rgb.shape[:2]
