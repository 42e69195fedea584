"""SLIC superpixels (fast-slic) and their per-superpixel statistics, all vectorised."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

MIN_PIXELS_PER_SUPERPIXEL = 4  # fast-slic dies (SIGFPE) when asked for more clusters than pixels


@functools.cache
def slic_class() -> type:
    """fast-slic's AVX2 class where the CPU has AVX2, else the portable one.

    libstdc++ is loaded globally first: on Ubuntu 24.04/gcc 13 images fast-slic segfaults in a
    plain Python process without it.
    """
    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass
    if cpu_has_avx2():
        from fast_slic.avx2 import SlicAvx2

        return SlicAvx2
    from fast_slic import Slic

    return Slic


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            return " avx2" in handle.read()
    except OSError:
        return False


def clamp_num_superpixels(requested: int, height: int, width: int) -> int:
    """The request, reduced so that every superpixel can have a few pixels (tiny images)."""
    return max(1, min(requested, (height * width) // MIN_PIXELS_PER_SUPERPIXEL))


def relabel_contiguous(raw: np.ndarray) -> np.ndarray:
    """Map the ids present in `raw` onto 0..S-1 (order kept), in O(pixels) with a lookup table."""
    if raw.min() < 0:
        raise RuntimeError("SLIC left pixels unassigned")
    present = np.bincount(raw.ravel()) > 0
    lookup = (np.cumsum(present) - 1).astype(np.uint16)
    return lookup[raw]


def compute_superpixels(rgb: np.ndarray, num_superpixels: int, compactness: float, num_threads: int = 1) -> np.ndarray:
    """H x W uint16 superpixel map with contiguous ids 0..S-1 covering every pixel."""
    height, width = rgb.shape[:2]
    slic = slic_class()(
        num_components=clamp_num_superpixels(num_superpixels, height, width),
        compactness=compactness,
        num_threads=num_threads,
    )
    return relabel_contiguous(slic.iterate(np.ascontiguousarray(rgb, dtype=np.uint8)))


@dataclass(frozen=True)
class SuperpixelStats:
    """Per-superpixel statistics, each indexed by superpixel id."""

    area: np.ndarray  # (S,) int32 pixel count
    label: np.ndarray  # (S,) uint8 majority label (ties -> smallest label id)
    purity: np.ndarray  # (S,) float32 fraction of pixels carrying the majority label
    centroid: np.ndarray  # (S, 2) float32 (y, x) in pixels
    mean_rgb: np.ndarray  # (S, 3) float32 in 0..255


def majority_labels(superpixels: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority label (ties -> smallest id), its purity and the area of every superpixel, via one bincount."""
    flat = superpixels.ravel().astype(np.intp)
    count = int(flat.max()) + 1
    votes = np.bincount(flat * num_labels + labels.ravel(), minlength=count * num_labels).reshape(count, num_labels)
    area = votes.sum(axis=1)
    majority = votes.argmax(axis=1)
    purity = votes[np.arange(count), majority] / np.maximum(area, 1)
    return majority.astype(np.uint8), purity.astype(np.float32), area


def superpixel_stats(superpixels: np.ndarray, labels: np.ndarray, rgb: np.ndarray, num_labels: int) -> SuperpixelStats:
    """Area, majority label, purity, centroid and mean colour of every superpixel via bincount."""
    majority, purity, area = majority_labels(superpixels, labels, num_labels)
    flat = superpixels.ravel().astype(np.intp)
    count = len(area)
    rows, cols = np.divmod(np.arange(flat.size), superpixels.shape[1])
    centroid = np.stack([np.bincount(flat, rows, count), np.bincount(flat, cols, count)], axis=1) / area[:, None]
    colour = rgb.reshape(-1, 3)
    mean_rgb = np.stack([np.bincount(flat, colour[:, c], count) for c in range(3)], axis=1) / area[:, None]
    return SuperpixelStats(
        area=area.astype(np.int32),
        label=majority,
        purity=purity,
        centroid=centroid.astype(np.float32),
        mean_rgb=mean_rgb.astype(np.float32),
    )
