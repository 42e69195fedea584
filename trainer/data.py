"""Training crops from shard rows: random rescale + crop + flip, per-crop superpixel labels, fixed-width columns.

The same geometric transform is applied to the image (bilinear), the label map and the superpixel
map (nearest) of a Window; with `mosaic` > 1 a training crop is made of vertical strips of that many
images' windows (`mosaic_windows`); then, once per training crop, superpixel ids are re-indexed to
those present and each superpixel's label and purity are recomputed for the crop (`crop_statistics`).
`crop_task` is the plain function the training data stage maps (on Ray Data, or in-process without
Ray): row groups in, columns of ready crops out.
Every per-superpixel column is padded to one width for the whole run, so crops of different tasks
stack into one batch; `trim_slots` then cuts a batch's columns, on the host, to the most superpixels
of any of its crops, so the training step never has to ask the device how many a batch holds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from spix.pipeline.imageio import decode_labels, decode_rgb
from spix.pipeline.shards import RowGroup, decode_superpixels, read_row_group, table_rows
from spix.pipeline.superpixels import majority_labels, relabel_contiguous

TRAIN_COLUMNS = ["image_id", "image", "labels", "superpixels", "height", "width"]


@dataclass
class Crop:
    rgb: np.ndarray  # (C, C, 3) uint8
    labels: np.ndarray  # (C, C) uint8
    superpixels: np.ndarray  # (C, C) uint16, ids 0..S-1 contiguous
    sp_label: np.ndarray  # (S,) majority label within the crop
    sp_purity: np.ndarray  # (S,) purity within the crop


def sample_rng(seed: int, epoch: int, image_id: str) -> np.random.Generator:
    """Augmentation randomness that depends only on (seed, epoch, image), not on worker or order."""
    return np.random.default_rng([seed, epoch, zlib.crc32(image_id.encode())])


def nearest_indices(start: float, window: float, size: int, limit: int) -> np.ndarray:
    """Source pixel of each of `size` output pixels sampling [start, start + window) (pixel centres)."""
    centres = start + (np.arange(size) + 0.5) * (window / size)
    return np.clip(np.floor(centres).astype(np.intp), 0, limit - 1)


@dataclass
class Window:
    """A training crop's pixels before its superpixel statistics, ids still the source image's.

    Why apart from Crop: mosaic_windows cuts strips out of windows, and the statistics (contiguous ids,
    labels, purities) are then counted once per training crop, not once per source crop and again per mosaic.
    """

    rgb: np.ndarray  # (C, C, 3) uint8
    labels: np.ndarray  # (C, C) uint8
    superpixels: np.ndarray  # (C, C) integer ids, as in the source image (not contiguous)


def random_window(
    rgb: np.ndarray, labels: np.ndarray, superpixels: np.ndarray, crop: int, scale_range: tuple[float, ...],
    rng: np.random.Generator,
) -> Window:
    """Random rescale by a factor drawn from scale_range (never below the crop size), square crop and
    horizontal flip of one sample."""
    height, width = labels.shape
    scale = max(rng.uniform(*scale_range), crop / min(height, width))
    window = min(crop / scale, height, width)  # side of the crop in source pixels (min: float rounding)
    top = rng.uniform(0, height - window)
    left = rng.uniform(0, width - window)
    flip = bool(rng.random() < 0.5)
    box = (left, top, left + window, top + window)
    image = np.asarray(Image.fromarray(rgb).resize((crop, crop), Image.Resampling.BILINEAR, box=box))
    rows = nearest_indices(top, window, crop, height)
    cols = nearest_indices(left, window, crop, width)
    if flip:
        image, cols = image[:, ::-1], cols[::-1]
    return Window(np.ascontiguousarray(image), labels[rows[:, None], cols[None, :]], superpixels[rows[:, None], cols[None, :]])


def crop_statistics(window: Window, num_labels: int) -> Crop:
    """The training crop of a window: superpixel ids made 0..S-1, each one's majority label and purity
    counted within the crop (not the whole image)."""
    superpixels = relabel_contiguous(window.superpixels)
    sp_label, sp_purity, _ = majority_labels(superpixels, window.labels, num_labels)
    return Crop(window.rgb, window.labels, superpixels, sp_label, sp_purity)


def mosaic_windows(windows: Sequence[Window], images_per_crop: int) -> list[Window]:
    """Windows made of `images_per_crop` vertical strips of different images: strip t of window k is strip t of windows[(k + t) % n].

    Why: the loss compares superpixels of one training crop only, so without this nothing asks a class to
    look the same in two images, which a classifier or a search across images needs. In a mosaic the
    within-crop loss, unchanged, also pulls together same-label superpixels of different images and
    pushes apart different-label ones. Every strip of every window is used exactly once (with n >= 2); a
    superpixel cut by a strip edge becomes two (each strip's ids are offset past the previous strips').
    Window k keeps its place (and key) in the batch. Measured in README, "How good are the features".
    """
    if images_per_crop <= 1 or len(windows) < 2:
        return list(windows)
    side = windows[0].labels.shape[1]
    edges = np.linspace(0, side, images_per_crop + 1).round().astype(np.intp)
    mosaics = []
    for k in range(len(windows)):
        strips = [(windows[(k + t) % len(windows)], slice(edges[t], edges[t + 1])) for t in range(images_per_crop)]
        offsets = np.cumsum([0] + [int(w.superpixels[:, cols].max()) + 1 for w, cols in strips[:-1]])
        superpixels = np.concatenate([w.superpixels[:, cols].astype(np.int64) + o for (w, cols), o in zip(strips, offsets)], axis=1)
        labels = np.concatenate([w.labels[:, cols] for w, cols in strips], axis=1)
        rgb = np.concatenate([w.rgb[:, cols] for w, cols in strips], axis=1)
        mosaics.append(Window(rgb, labels, superpixels))
    return mosaics


def row_window(row: Mapping[str, Any], crop: int, scale_range: tuple[float, ...], seed: int, epoch: int) -> Window:
    """Decode a shard row and crop it with its deterministic per-(seed, epoch, image) randomness."""
    rgb = decode_rgb(row["image"])
    labels = decode_labels(row["labels"]).astype(np.uint8)
    superpixels = decode_superpixels(row["superpixels"], int(row["height"]), int(row["width"]))
    return random_window(rgb, labels, superpixels, crop, scale_range, sample_rng(seed, epoch, str(row["image_id"])))


def stack_crops(crops: Sequence[Crop], slots: int, keys: Sequence[int]) -> dict[str, np.ndarray]:
    """Crops -> fixed-shape columns; per-superpixel values right-padded with zeros to `slots` per crop.

    `keys` identify the images (their position in the run's row list) so a batch can be traced back.
    A crop with more superpixels than `slots` is an error: its ids would land in another crop's slots.
    """
    counts = np.array([len(c.sp_label) for c in crops], dtype=np.int64)
    if len(crops) and counts.max() > slots:
        raise ValueError(f"a crop has {counts.max()} superpixels, more than the {slots} slots of this run")
    column = np.arange(slots)[None, :] < counts[:, None]  # (n, slots): True where a superpixel exists
    sp_label = np.zeros((len(crops), slots), dtype=np.uint8)
    sp_purity = np.zeros((len(crops), slots), dtype=np.float32)
    if len(crops):
        sp_label[column] = np.concatenate([c.sp_label for c in crops])
        sp_purity[column] = np.concatenate([c.sp_purity for c in crops])
    return {
        "key": np.asarray(keys, dtype=np.int64),
        "images": np.stack([c.rgb for c in crops]),
        "labels": np.stack([c.labels for c in crops]),
        "superpixels": np.stack([c.superpixels.astype(np.int32) for c in crops]),
        "sp_label": sp_label,
        "sp_purity": sp_purity,
    }


def trim_slots(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch's columns with the per-superpixel ones cut to the most superpixels of any of its crops.

    The run's slots are the most superpixels of any whole image (~500), a crop holds far fewer (110-320
    at crop 128 of the toy images), and the loss's pair matrices grow with the square of the slots: with
    `--loss superpixel-batch` the step ran 2.2x faster trimmed (benchmarks/train_throughput.py (f), one
    CPU thread); the within-image loss showed no measurable change there. Crop ids are contiguous, so
    the largest id + 1 is the most any crop needs.
    """
    used = int(columns["superpixels"].max()) + 1 if len(columns["superpixels"]) else 0
    return {**columns, "sp_label": columns["sp_label"][:, :used], "sp_purity": columns["sp_purity"][:, :used]}


@dataclass(frozen=True)
class CropSettings:
    """What a crop task needs besides its rows: the same for every task of a run."""

    groups: tuple[RowGroup, ...]  # the run's training row groups; tasks refer to them by index
    first_keys: tuple[int, ...]  # key of each group's first row (keys count rows over all groups)
    crop: int
    scale_range: tuple[float, ...]  # (min, max) random rescale of the source window
    num_labels: int
    slots: int  # superpixel slots per crop: the most superpixels any training image has, times `mosaic`
    seed: int
    mosaic: int  # images per crop (mosaic_windows); 1 = each crop from one image


def crop_task(epoch: int, groups: Sequence[int], rows: Sequence[int], settings: CropSettings) -> dict[str, np.ndarray]:
    """The training data stage: read the row groups a task needs and crop its rows, in the task's order.

    `groups[i]`, `rows[i]` name the i-th image of the task (row group index, row within it). Plain
    function: Ray Data maps it over tasks on the cluster's CPUs; `train_without_ray` calls it directly.
    """
    tables = {g: list(table_rows(read_row_group(settings.groups[g], TRAIN_COLUMNS))) for g in sorted(set(groups))}
    windows = [row_window(tables[g][r], settings.crop, settings.scale_range, settings.seed, epoch) for g, r in zip(groups, rows)]
    crops = [crop_statistics(window, settings.num_labels) for window in mosaic_windows(windows, settings.mosaic)]
    keys = [settings.first_keys[g] + r for g, r in zip(groups, rows)]
    return stack_crops(crops, settings.slots, keys)


@dataclass
class Batch:
    """One training batch on its device; image shapes are fixed for a run, superpixel slots per batch (trim_slots)."""

    images: torch.Tensor  # (B, C, C, 3) uint8
    labels: torch.Tensor  # (B, C, C) uint8
    superpixels: torch.Tensor  # (B, C, C) int32, ids below sp_label.shape[1]
    sp_label: torch.Tensor  # (B, S) uint8, 0 in padding
    sp_purity: torch.Tensor  # (B, S) float32, 0 in padding

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], device: torch.device | str = "cpu") -> "Batch":
        """From crop columns (numpy arrays or tensors, e.g. Ray Data's torch batches); other columns are ignored."""
        return cls(**{name: torch.as_tensor(columns[name]).to(device, non_blocking=True) for name in cls.__dataclass_fields__})
