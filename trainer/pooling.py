"""Superpixel pooling: the embedding of a superpixel is the mean of its pixels' embeddings."""

from __future__ import annotations

import torch


def check_superpixel_ids(superpixels: torch.Tensor, num_superpixels: torch.Tensor) -> None:
    """Raise ValueError unless every id of image b lies in 0..num_superpixels[b]-1.

    An id out of range would silently land in another image's slots of the flattened index.
    """
    flat = superpixels.reshape(superpixels.shape[0], -1)
    if flat.numel() == 0:
        return
    if bool((flat.amin(dim=1) < 0).any()) or bool((flat.amax(dim=1) >= num_superpixels).any()):
        raise ValueError("superpixel ids must lie in 0..num_superpixels-1 of their image")


def superpixel_pool(
    features: torch.Tensor, superpixels: torch.Tensor, num_superpixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding per superpixel, padded to the largest superpixel count of the batch.

    features (B, D, H, W), superpixels (B, H, W) integer ids 0..S_b-1, num_superpixels (B,).
    Returns pooled (B, S_max, D) float32 and mask (B, S_max), True where the superpixel exists and
    has at least one pixel; other slots are zero. One scatter over a flattened index b * S_max + id
    covers the whole batch. Sums are accumulated in float32 so bf16 autocast does not cost precision.
    """
    batch, dim = features.shape[:2]
    num_superpixels = num_superpixels.to(superpixels.device)
    check_superpixel_ids(superpixels, num_superpixels)
    s_max = int(num_superpixels.max()) if batch else 0
    offsets = torch.arange(batch, device=superpixels.device) * s_max
    index = (superpixels.reshape(batch, -1).long() + offsets[:, None]).reshape(-1)
    # (B, D, H, W) -> (B*H*W, D); a view when the features are channels_last.
    pixels = features.permute(0, 2, 3, 1).reshape(-1, dim).float()
    sums = torch.zeros(batch * s_max, dim, device=features.device).index_add(0, index, pixels)
    counts = torch.bincount(index, minlength=batch * s_max)
    pooled = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    return pooled.reshape(batch, s_max, dim), (counts > 0).reshape(batch, s_max)
