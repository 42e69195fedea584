"""The one embedding path: images -> dense per-pixel features -> superpixel means.

Training's validation, `spix eval` and `spix infer` all call `embed_batch` (or its one-image numpy
wrapper), so every number spix reports comes from the same forward pass and pooling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spix.trainer.model import autocast, normalize_images
from spix.trainer.pooling import superpixel_pool


@torch.no_grad()
def embed_batch(
    model: nn.Module, images: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-size images (B, H, W, 3) uint8 and their superpixel maps (B, H, W), on the model's device ->
    dense features (B, D, H, W) float32 and superpixel means (B, num_superpixels, D) float32.

    The model runs in eval mode (BN running statistics), under bf16 autocast when `amp`.
    """
    model.eval()
    with autocast(images.device, amp):
        features = model(normalize_images(images))
    pooled, _ = superpixel_pool(features, superpixels, num_superpixels)
    return features.float(), pooled


def embed_superpixels(
    model: nn.Module, rgb: np.ndarray, superpixels: np.ndarray, device: torch.device | str, amp: bool = False
) -> np.ndarray:
    """(S, D) float32 mean embedding of every superpixel of one full image (numpy in, numpy out)."""
    device = torch.device(device)
    images = torch.from_numpy(np.array(rgb, dtype=np.uint8))[None].to(device)  # a copy: decoded images are read-only
    ids = torch.from_numpy(superpixels.astype(np.int64))[None].to(device)
    _, pooled = embed_batch(model, images, ids, int(superpixels.max()) + 1, amp)
    return pooled[0].cpu().numpy()


class EmbeddingMoments:
    """Area-weighted first and second moments of superpixel embeddings, summed over images and workers.

    Enough to fit one principal-component basis for a whole run (`principal_basis`), so that a colour of
    the feature picture means the same in every image; the moments of several workers simply add up.
    """

    def __init__(self, dim: int):
        self.weight = 0.0
        self.first = np.zeros(dim)
        self.second = np.zeros((dim, dim))

    def add(self, embeddings: np.ndarray, weights: np.ndarray) -> None:
        e = np.asarray(embeddings, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        self.weight += float(w.sum())
        self.first += w @ e
        self.second += (e * w[:, None]).T @ e

    def merge(self, other: "EmbeddingMoments") -> None:
        self.weight += other.weight
        self.first += other.first
        self.second += other.second

    def principal_basis(self, n: int = 3) -> dict[str, list]:
        """{"mean": D, "components": n x D, "std": n}: the leading principal axes of the weighted
        embeddings and the standard deviation along each. Each axis's sign is fixed (its largest
        entry positive), so the same moments always give the same basis."""
        if self.weight <= 0:
            raise ValueError("no embeddings were added")
        mean = self.first / self.weight
        covariance = self.second / self.weight - np.outer(mean, mean)
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)  # ascending
        components = vectors[:, ::-1][:, :n].T
        signs = np.sign(components[np.arange(n), np.abs(components).argmax(axis=1)])
        components = components * signs[:, None]
        std = np.sqrt(np.clip(values[::-1][:n], 0.0, None))
        return {"mean": mean.tolist(), "components": components.tolist(), "std": std.tolist()}
