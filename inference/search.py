"""Region search over an `spix infer` output folder: the superpixels, in every image, nearest to the one at a point.

Plain numpy (no Ray), from the files `spix infer` writes: OUT/embeddings/*.parquet. The metric is the one the
loss trains, the squared Euclidean distance between superpixel embeddings, computed exactly over every
superpixel of the folder (float32 math on the stored float16 values). At 500 superpixels x 1,000 images that
is 64 M multiply-adds per query, a fraction of a second, so no approximate index is needed at the sizes the
gallery viewer handles. Images are in relative-path order and superpixels in id order, and equal distances
rank in that order, so the gallery's viewer, which walks the images in the same order, ranks ties the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spix.inference.outputs import FILES, read_embeddings, superpixel_centroids

EMBEDDINGS_FOLDER = FILES["embeddings"][0][1]
CHUNK_ROWS = 65536  # superpixels per block of the distance computation: a float32 copy of at most 32 MB at D = 128
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError)  # a truncated, foreign or inconsistent file


class SearchError(ValueError):
    """A problem with the search's inputs (output folder, image name, point): one line to the user."""


@dataclass(frozen=True)
class SearchIndex:
    """Every superpixel of an output folder, image by image in relative-path order, each image's in id order."""

    relpaths: np.ndarray  # (N,) str: each image's path under the inferred folder, sorted
    files: np.ndarray  # (N,) str: each image's Parquet file
    sizes: np.ndarray  # (N, 2) int32: each image's (height, width) as processed
    image: np.ndarray  # (T,) int32: the image of each superpixel
    superpixel: np.ndarray  # (T,) int32: its id in that image
    centroid: np.ndarray  # (T, 2) float32: its mean pixel position (y, x) in the processed image
    embeddings: np.ndarray  # (T, D) float16
    skipped: tuple[str, ...]  # unreadable Parquet files, "path: reason" (also issued as warnings)


@dataclass(frozen=True)
class Matches:
    """Superpixels found, best first."""

    relpath: np.ndarray  # (K,) str
    superpixel: np.ndarray  # (K,) int32
    distance: np.ndarray  # (K,) float32: squared Euclidean distance to the query's embedding
    centroid: np.ndarray  # (K, 2) float32: (y, x) in the processed image
    row: np.ndarray  # (K,) int64: rows of the index


def read_image(path: Path, dim: int | None) -> dict | str:
    """One Parquet file as arrays, or why it cannot be used."""
    try:
        row = read_embeddings(path)
        superpixels, embeddings = row["superpixels"], row["embeddings"]
        if superpixels.size and int(superpixels.max()) >= len(embeddings):
            return f"superpixel id {int(superpixels.max())} but {len(embeddings)} embeddings"
    except READ_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    if dim is not None and embeddings.shape[1] != dim:
        return f"{embeddings.shape[1]}-D embeddings, the folder's first file has {dim}"
    return row


def load_index(out: Path) -> SearchIndex:
    """Read every OUT/embeddings/*.parquet; an unreadable one is skipped with a warning, not an error."""
    folder = Path(out) / EMBEDDINGS_FOLDER
    if not folder.is_dir():
        raise SearchError(f"{out} has no {EMBEDDINGS_FOLDER}/ folder: not an output folder of `spix infer` (with embeddings)")
    images, skipped, dim = [], [], None
    for path in sorted(folder.glob("*.parquet")):
        row = read_image(path, dim)
        if isinstance(row, str):
            skipped.append(f"{path}: {row}")
            warnings.warn(f"skipped {skipped[-1]}", stacklevel=2)
            continue
        superpixels, embeddings = row["superpixels"], row["embeddings"]
        dim = embeddings.shape[1]  # the maps are not kept: 0.7 MB each at 683 x 512, 20 times the embeddings
        images.append((row["relative_path"], str(path), superpixels.shape, superpixel_centroids(superpixels, len(embeddings)), embeddings))
    if not images:
        raise SearchError(f"no readable embeddings in {folder}" + (f" ({len(skipped)} unreadable files)" if skipped else ""))
    images.sort(key=lambda item: item[0])
    relpaths, files, sizes, centroids, embeddings = zip(*images)
    counts = np.array([len(e) for e in embeddings])
    return SearchIndex(
        relpaths=np.array(relpaths),
        files=np.array(files),
        sizes=np.array(sizes, np.int32),
        image=np.repeat(np.arange(len(images), dtype=np.int32), counts),
        superpixel=np.concatenate([np.arange(n, dtype=np.int32) for n in counts]),
        centroid=np.concatenate(centroids),
        embeddings=np.concatenate(embeddings),
        skipped=tuple(skipped),
    )


def locate(index: SearchIndex, relpath: str, y: int, x: int) -> int:
    """The index row of the superpixel of image `relpath` at pixel (y, x) of the processed image."""
    found = np.flatnonzero(index.relpaths == relpath)
    if not found.size:
        raise SearchError(f"no image {relpath!r} in the output folder; give its path under the inferred folder, "
                          f"e.g. {index.relpaths[0]!r}")
    image = int(found[0])
    height, width = (int(v) for v in index.sizes[image])
    if not (0 <= y < height and 0 <= x < width):
        raise SearchError(f"point ({y}, {x}) is outside {relpath}, which is {height} x {width} (height x width) as "
                          f"processed: y must be in 0..{height - 1}, x in 0..{width - 1}")
    superpixels = read_embeddings(Path(index.files[image]))["superpixels"]
    return int(np.searchsorted(index.image, image)) + int(superpixels[y, x])


def squared_distances(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(T,) float32 squared Euclidean distances of float16 rows to `query`, in blocks (float32 copies stay small)."""
    query = query.astype(np.float32)
    distances = np.empty(len(embeddings), np.float32)
    for start in range(0, len(embeddings), CHUNK_ROWS):
        block = embeddings[start : start + CHUNK_ROWS].astype(np.float32) - query
        distances[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return distances


def select(index: SearchIndex, rows: np.ndarray, distances: np.ndarray) -> Matches:
    rows = np.asarray(rows, np.int64)
    return Matches(index.relpaths[index.image[rows]], index.superpixel[rows], np.asarray(distances, np.float32),
                   index.centroid[rows], rows)


def nearest(index: SearchIndex, row: int, top: int) -> Matches:
    """The `top` superpixels nearest to index row `row` (itself left out), best first; equal distances in index order."""
    distances = squared_distances(index.embeddings, index.embeddings[row])
    distances[row] = np.inf
    k = min(top, len(distances) - 1)
    if k < 1:
        return select(index, np.zeros(0, np.int64), np.zeros(0, np.float32))
    kth = np.partition(distances, k - 1)[k - 1]
    candidates = np.flatnonzero(distances <= kth)
    best = candidates[np.lexsort((candidates, distances[candidates]))][:k]
    return select(index, best, distances[best])


def search(out: Path, relpath: str, y: int, x: int, top: int) -> tuple[Matches, Matches]:
    """The superpixel of image `relpath` (path under the inferred folder) at pixel (y, x) of the processed image,
    and the `top` superpixels of the whole folder nearest to it (itself left out)."""
    index = load_index(out)
    row = locate(index, relpath, y, x)
    return select(index, np.array([row]), np.zeros(1)), nearest(index, row, top)
