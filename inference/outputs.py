"""The files `spix infer` writes for each image: their names, encoding, atomic writing, and reading them back.

Everything here runs in the CPU tasks at the end of the pipeline (or in a test): arrays in, files out. Each
file goes through a temporary name and a rename, so a reader (or a re-run) never sees a partial file; an
image is done when every file of the kinds asked for exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, PngImagePlugin

from spix.pipeline.files import write_atomic, write_text_atomic
from spix.pipeline.superpixels import label_runs, paint_superpixels

MAX_NAME_BYTES = 200  # output names stay well below the usual 255-byte file name limit
# kind of output -> its files: (key, folder, suffix). "soft" is the colour composite and the stacked layers.
FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "embeddings": (("embeddings", "embeddings", ".parquet"), ("search", "search", ".js")),
    "features": (("features", "features", ".png"),),
    "soft": (("soft", "soft", ".png"), ("layers", "layers", ".png")),
    "inputs": (("inputs", "inputs", ".jpg"),),
    "dense": (("dense", "dense", ".npy"),),
    "labels": (("labels", "labels", ".png"),),
}
# zlib level 1 with the run-length strategy: within ~10% of level 6's size on these smooth pictures, at
# the speed of level 1 (measured in benchmarks/infer.py's notes in docs/inference.md).
PNG_OPTIONS = {"compress_level": 1, "compress_type": 3}
LAYERS_KEY = "spix:soft_layers"  # PNG text chunk of the stacked layers: K
SEARCH_MAP_SIDE = 256  # longest side of the superpixel map in OUT/search/<name>.js (beyond what the page shows)


# ----------------------------------------------------------------------------- names


def with_digest(name: str, relpath: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` with a short hash of `relpath` before its extension, the stem shortened to fit `max_bytes`."""
    stem, ext = os.path.splitext(name)
    tag = "~" + hashlib.sha1(relpath.encode()).hexdigest()[:10] + ext
    room = max_bytes - len(tag.encode())
    return stem.encode()[:room].decode(errors="ignore") + tag


def output_names(relpaths: list[str]) -> dict[str, str]:
    """A unique, flat file name per input: the relative path with '/' -> '__', extension kept.

    Names that would clash (a/b.jpg vs a__b.jpg) or run too long get a hash of their path; the top-level file
    of a clash keeps the plain name. Names never contain '/', so outputs stay inside OUT.
    """
    flat = {r: r.replace("/", "__") for r in relpaths}
    counts = Counter(flat.values())
    names = {}
    for relpath, name in flat.items():
        clash = counts[name] > 1 and "/" in relpath
        names[relpath] = with_digest(name, relpath) if clash or len(name.encode()) > MAX_NAME_BYTES else name
    return names


def output_files(out: Path, name: str, kinds: tuple[str, ...]) -> dict[str, Path]:
    """Every file written for one input, by key (see FILES), for the kinds of output asked for."""
    return {key: out / folder / f"{name}{suffix}" for kind in kinds for key, folder, suffix in FILES[kind]}


def is_done(out: Path, name: str, kinds: tuple[str, ...]) -> bool:
    return all(path.is_file() for path in output_files(out, name, kinds).values())


def write_png(path: Path, image: Image.Image, info: PngImagePlugin.PngInfo | None = None) -> None:
    write_atomic(path, lambda handle: image.save(handle, format="PNG", pnginfo=info, **PNG_OPTIONS))


# ----------------------------------------------------------------------------- encoding one image's files


def label_map_image(superpixels: np.ndarray, superpixel_classes: np.ndarray) -> Image.Image:
    """A palette PNG: pixel values are class ids (read back with numpy), the palette shows them in colour."""
    from spix.inference.pictures import label_palette  # imports torch, which the readers below (spix search) need not

    image = Image.fromarray(paint_superpixels(superpixels, np.asarray(superpixel_classes, np.uint8)))
    image.putpalette(label_palette().ravel().tolist())  # turns the L image into a P image
    return image


def stacked_layers_image(layers: np.ndarray) -> tuple[Image.Image, PngImagePlugin.PngInfo]:
    """(K, H, W) uint8 layers -> one grayscale (K*H, W) image, K recorded in a text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(LAYERS_KEY, str(layers.shape[0]))
    return Image.fromarray(np.ascontiguousarray(layers).reshape(-1, layers.shape[2])), info


def embeddings_table(relpath: str, superpixels: np.ndarray, embeddings: np.ndarray, orig_size: tuple[int, int]) -> pa.Table:
    """One row: path, sizes, superpixel map (uint16) and S x D float16 embeddings (raw little-endian bytes)."""
    height, width = superpixels.shape
    return pa.table({
        "relative_path": [relpath],
        "height": pa.array([height], pa.int32()),
        "width": pa.array([width], pa.int32()),
        "orig_height": pa.array([orig_size[0]], pa.int32()),
        "orig_width": pa.array([orig_size[1]], pa.int32()),
        "num_superpixels": pa.array([embeddings.shape[0]], pa.int32()),
        "dim": pa.array([embeddings.shape[1]], pa.int32()),
        "superpixels": pa.array([superpixels.astype("<u2").tobytes()], pa.binary()),
        "embeddings": pa.array([embeddings.astype("<f2").tobytes()], pa.binary()),
    })


def superpixel_centroids(superpixels: np.ndarray, count: int) -> np.ndarray:
    """(count, 2) float32 mean pixel position (y, x) of every superpixel id; NaN for an id without pixels.

    Summed over horizontal runs of one id (label_runs): a run of n pixels from column c of row y adds n * y and
    n * c + n (n - 1) / 2, so the bincounts go over ~25k runs instead of ~350k pixels of an ADE-sized map.
    """
    if not superpixels.size:
        return np.full((count, 2), np.nan, np.float32)
    runs = label_runs(superpixels, superpixels)
    lengths = runs.lengths.astype(np.float64)
    area = np.bincount(runs.ids, lengths, count)
    sums = [np.bincount(runs.ids, runs.rows * lengths, count),
            np.bincount(runs.ids, lengths * runs.cols + lengths * (lengths - 1) / 2, count)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.stack(sums, axis=1) / area[:, None]).astype(np.float32)


def quantise_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and a float32 step per row, row ~ codes * step: step = max |row| / 127, so every value is off by
    at most step / 2. A step per superpixel keeps small embeddings as precise as large ones."""
    values = embeddings.astype(np.float32)
    step = np.abs(values).max(axis=1) / 127
    codes = np.rint(values / np.where(step > 0, step, 1)[:, None])
    return np.clip(codes, -127, 127).astype(np.int8), step.astype(np.float32)


def encoded(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def search_script(name: str, relpath: str, superpixels: np.ndarray, embeddings: np.ndarray) -> str:
    """OUT/search/<name>.js: what the gallery's region search needs of one image, as one call of
    `spixSearch.add({...})` (a script, because browsers refuse fetch() of file:// URLs).

    The embeddings (the float16 values the Parquet file holds and `spix search` ranks) as the image's mean plus
    int8 codes with a step per superpixel (quantise_rows of the differences from the mean: taking the mean out
    first halves the step, and in a measurement on toy data raised the queries whose top 10 equal `spix
    search`'s from 56% to 82%); the centroids; the superpixel map sampled every `stride` pixels (longest side
    <= SEARCH_MAP_SIDE, so cell (i, j) is pixel (i * stride, j * stride)) and run-length coded along its rows.
    About 100 KB for 500 superpixels of 128 dimensions. Arrays are little-endian, base64.
    """
    height, width = superpixels.shape
    stride = max(1, -(-max(height, width) // SEARCH_MAP_SIDE))
    sampled = superpixels[::stride, ::stride]
    flat = sampled.ravel()
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]])) if flat.size else np.zeros(0, np.intp)
    values = embeddings.astype(np.float16).astype(np.float32)
    mean = values.mean(axis=0) if len(values) else np.zeros(values.shape[1], np.float32)
    codes, step = quantise_rows(values - mean)
    record = {
        "name": name, "relpath": relpath, "height": height, "width": width, "count": len(embeddings),
        "dim": embeddings.shape[1], "stride": stride, "map_height": sampled.shape[0], "map_width": sampled.shape[1],
        "mean": encoded(mean, "<f4"), "step": encoded(step, "<f4"), "codes": encoded(codes, "i1"),
        "centroid": encoded(superpixel_centroids(superpixels, len(embeddings)), "<f4"),
        "run_starts": encoded(starts, "<u4"), "run_ids": encoded(flat[starts], "<u2"),
    }
    return f"spixSearch.add({json.dumps(record)});\n"


def write_image_files(out: Path, name: str, kinds: tuple[str, ...], row: dict[str, Any]) -> None:
    """Encode and write one image's files of the given kinds from its arrays (a row of the model stage).

    The row holds: relpath, orig_height, orig_width, superpixels (H, W) uint16, embeddings (S, D) float32,
    and per kind rgb (inputs), features (features), composite and layers (soft), dense, classes (labels).
    """
    files = output_files(out, name, kinds)
    superpixels = row["superpixels"]
    if "embeddings" in kinds:
        table = embeddings_table(row["relpath"], superpixels, row["embeddings"], (row["orig_height"], row["orig_width"]))
        write_atomic(files["embeddings"], lambda handle: pq.write_table(table, handle, compression="zstd"))
        write_text_atomic(files["search"], search_script(name, row["relpath"], superpixels, row["embeddings"]))
    if "features" in kinds:
        write_png(files["features"], Image.fromarray(row["features"]))
    if "soft" in kinds:
        write_png(files["soft"], Image.fromarray(row["composite"]))
        write_png(files["layers"], *stacked_layers_image(row["layers"]))
    if "inputs" in kinds:
        write_atomic(files["inputs"], lambda handle: Image.fromarray(row["rgb"]).save(handle, format="JPEG", quality=90))
    if "dense" in kinds:
        write_atomic(files["dense"], lambda handle: np.save(handle, row["dense"]))
    if "labels" in kinds:
        write_png(files["labels"], label_map_image(superpixels, row["classes"]))


# ----------------------------------------------------------------------------- reading back


def read_embeddings(path: Path) -> dict[str, Any]:
    """One OUT/embeddings/*.parquet row back as arrays: superpixels (H, W) uint16, embeddings (S, D) float16."""
    row = pq.read_table(path).to_pylist()[0]
    row["superpixels"] = np.frombuffer(row["superpixels"], "<u2").reshape(row["height"], row["width"])
    row["embeddings"] = np.frombuffer(row["embeddings"], "<f2").reshape(row["num_superpixels"], row["dim"])
    return row


def read_soft_layers(path: Path) -> np.ndarray:
    """OUT/layers/<name>.png back as (K, H, W) float32 layers in [0, 1] that sum to 1 at every pixel."""
    with Image.open(path) as image:
        k = int(image.text[LAYERS_KEY])
        stacked = np.asarray(image)
    return stacked.reshape(k, -1, stacked.shape[1]).astype(np.float32) / 255.0
