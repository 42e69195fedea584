"""Superpixel pooling: the embedding of a superpixel is the mean of its pixels' embeddings."""

from __future__ import annotations

import torch


def check_superpixel_ids(superpixels: torch.Tensor, num_superpixels: int) -> None:
    """Raise ValueError unless every id lies in 0..num_superpixels-1.

    An id out of range would silently land in another image's slots of the flattened index. The check
    reads the tensor on the host, so callers run it where the ids are made (CPU), not per GPU step.
    """
    if superpixels.numel() and (int(superpixels.min()) < 0 or int(superpixels.max()) >= num_superpixels):
        raise ValueError(f"superpixel ids must lie in 0..{num_superpixels - 1}")


def superpixel_pool(
    features: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding per superpixel, in `num_superpixels` slots per image.

    features (B, D, H, W), superpixels (B, H, W) integer ids 0..num_superpixels-1. Returns pooled
    (B, S, D) float32 and mask (B, S), True where the superpixel has at least one pixel; other slots
    are zero. One scatter over a flattened index b * S + id covers the whole batch; S is a host integer
    (the padded width of the batch), so nothing here waits for the device. Ids are checked on CPU
    tensors only: on a GPU the check would cost a host synchronisation per step, and the training
    crops and inference maps are checked where they are made. Sums are accumulated in float32 so
    bf16 autocast does not cost precision.
    """
    batch, dim = features.shape[:2]
    if superpixels.device.type == "cpu":
        check_superpixel_ids(superpixels, num_superpixels)
    offsets = torch.arange(batch, device=superpixels.device) * num_superpixels
    index = (superpixels.reshape(batch, -1).long() + offsets[:, None]).reshape(-1)
    # (B, D, H, W) -> (B*H*W, D); a view when the features are channels_last.
    pixels = features.permute(0, 2, 3, 1).reshape(-1, dim).float()
    slots = batch * num_superpixels
    sums = torch.zeros(slots, dim, device=features.device).index_add_(0, index, pixels)
    # index_add, not bincount: bincount on a GPU reads the largest index back to the host.
    counts = torch.zeros(slots, device=features.device).index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
    pooled = sums / counts.clamp(min=1).unsqueeze(1)
    return pooled.reshape(batch, num_superpixels, dim), (counts > 0).reshape(batch, num_superpixels)
