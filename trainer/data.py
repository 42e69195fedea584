"""Training samples from shard rows: random rescale + crop + flip, then collation with padding.

The same geometric transform is applied to the image (bilinear), the label map and the superpixel
map (nearest); superpixel ids are re-indexed to those present in the crop and each superpixel's
label and purity are recomputed for the crop. Plain numpy, so it runs without Ray.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from spix.pipeline.imageio import decode_labels, decode_rgb
from spix.pipeline.shards import decode_superpixels
from spix.pipeline.superpixels import majority_labels, relabel_contiguous

TRAIN_COLUMNS = ["image_id", "image", "labels", "superpixels", "height", "width"]
SCALE_RANGE = (0.5, 1.5)


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


def random_crop(
    rgb: np.ndarray, labels: np.ndarray, superpixels: np.ndarray, crop: int, num_labels: int, rng: np.random.Generator,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> Crop:
    """Random rescale (never below the crop size), square crop and horizontal flip of one sample."""
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
    crop_labels = labels[rows[:, None], cols[None, :]]
    crop_superpixels = relabel_contiguous(superpixels[rows[:, None], cols[None, :]])
    sp_label, sp_purity, _ = majority_labels(crop_superpixels, crop_labels, num_labels)
    return Crop(np.ascontiguousarray(image), crop_labels, crop_superpixels, sp_label, sp_purity)


def crop_row(row: dict[str, Any], crop: int, num_labels: int, seed: int, epoch: int) -> Crop:
    """Decode a shard row and crop it with its deterministic per-(seed, epoch, image) randomness."""
    rgb = decode_rgb(row["image"])
    labels = decode_labels(row["labels"]).astype(np.uint8)
    superpixels = decode_superpixels(row["superpixels"], int(row["height"]), int(row["width"]))
    return random_crop(rgb, labels, superpixels, crop, num_labels, sample_rng(seed, epoch, str(row["image_id"])))


@dataclass
class Batch:
    images: torch.Tensor  # (B, H, W, 3) uint8
    labels: torch.Tensor  # (B, H, W) long
    superpixels: torch.Tensor  # (B, H, W) long
    num_superpixels: torch.Tensor  # (B,) long
    sp_label: torch.Tensor  # (B, S_max) long, 0 in padding
    sp_purity: torch.Tensor  # (B, S_max) float, 0 in padding

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))


def pad_stack(arrays: Sequence[np.ndarray], length: int, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad 1-D arrays with zeros to a common length and stack them."""
    out = torch.zeros(len(arrays), length, dtype=dtype)
    for index, values in enumerate(arrays):  # one copy per image, not per superpixel
        out[index, : len(values)] = torch.as_tensor(values.astype(np.float32) if dtype.is_floating_point else values.astype(np.int64))
    return out


def collate(crops: Sequence[Crop]) -> Batch:
    """Same-size crops -> one padded batch (superpixel counts differ per image)."""
    counts = [len(c.sp_label) for c in crops]
    s_max = max(counts)
    return Batch(
        images=torch.from_numpy(np.stack([c.rgb for c in crops])),
        labels=torch.from_numpy(np.stack([c.labels for c in crops]).astype(np.int64)),
        superpixels=torch.from_numpy(np.stack([c.superpixels for c in crops]).astype(np.int64)),
        num_superpixels=torch.tensor(counts, dtype=torch.long),
        sp_label=pad_stack([c.sp_label for c in crops], s_max, torch.long),
        sp_purity=pad_stack([c.sp_purity for c in crops], s_max, torch.float32),
    )


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A columnar numpy batch (Ray Data) -> a list of row dicts."""
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
