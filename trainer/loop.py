"""The plain PyTorch training step, validation pass and superpixel embedding (no Ray inside).

Ray Train's per-worker function calls these; so can a plain script or a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from spix.pipeline.shards import Sample
from spix.trainer.data import Batch
from spix.trainer.losses import pixel_npair_loss, superpixel_npair_loss
from spix.trainer.metrics import image_pair_scores
from spix.trainer.embedding import embed_superpixels
from spix.trainer.model import autocast, normalize_images
from spix.trainer.pooling import superpixel_pool

LOSSES = ("superpixel", "pixel")


@dataclass(frozen=True)
class LossConfig:
    name: str = "superpixel"
    pixel_samples: int = 1024
    min_purity: float = 0.5


def compute_loss(model: nn.Module, batch: Batch, loss: LossConfig, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Forward the batch and apply the superpixel loss or the pixel-sampled baseline."""
    features = model(normalize_images(batch.images))
    if loss.name == "pixel":
        return pixel_npair_loss(features, batch.labels, loss.pixel_samples, generator)
    pooled, mask = superpixel_pool(features, batch.superpixels, batch.sp_label.shape[1])
    return superpixel_npair_loss(pooled, batch.sp_label, batch.sp_purity, mask, loss.min_purity)


def train_step(
    model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, loss: LossConfig, amp: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimisation step; returns loss and mean positive/negative pair distances."""
    model.train()
    device = batch.images.device
    with autocast(device, amp):
        value, stats = compute_loss(model, batch, loss, generator)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return {"loss": float(value.detach()), "pos_dist": float(stats["pos_dist"]), "neg_dist": float(stats["neg_dist"])}


@dataclass
class ValidationPart:
    """One worker's share of a validation pass, to be merged across workers before the AUC."""

    loss_sum: float
    images: int
    scores: np.ndarray  # -d_ij of sampled superpixel pairs
    positives: np.ndarray  # same-label flags of those pairs


def validate(
    model: nn.Module, samples: Iterable[Sample], device: torch.device, min_purity: float = 0.5,
    max_pairs_per_image: int = 2000, seed: int = 0, amp: bool = False,
) -> ValidationPart:
    """Superpixel loss and pair scores on full validation images (the shard's own superpixel labels)."""
    rng = np.random.default_rng(seed)
    loss_sum, images, scores, positives = 0.0, 0, [], []
    for sample in samples:
        emb = embed_superpixels(model, sample.rgb, sample.superpixels, device, amp)
        valid = sample.sp_purity >= min_purity
        value, _ = superpixel_npair_loss(
            torch.from_numpy(emb)[None], torch.from_numpy(sample.sp_label.astype(np.int64))[None],
            torch.from_numpy(sample.sp_purity)[None], torch.ones(1, len(emb), dtype=torch.bool), min_purity,
        )
        s, p = image_pair_scores(emb, sample.sp_label, valid, max_pairs_per_image, rng)
        loss_sum, images = loss_sum + float(value), images + 1
        scores.append(s)
        positives.append(p)
    return ValidationPart(
        loss_sum, images,
        np.concatenate(scores) if scores else np.zeros(0), np.concatenate(positives) if positives else np.zeros(0, bool),
    )


def train_without_ray(
    shards_uri: str, preset: str = "tiny", epochs: int = 1, batch_size: int = 4, crop: int = 64, lr: float = 1e-3,
    seed: int = 0, loss: LossConfig = LossConfig(), time_budget_s: float | None = None, device: str = "cpu",
) -> tuple[nn.Module, dict[str, float]]:
    """Single-process training on a shard folder: the path for a machine without Ray, tests and benchmarks.

    Returns the model and counters (steps, seconds). `time_budget_s` stops after that much training time.
    """
    import time

    from spix.pipeline.shards import iter_rows, read_manifest
    from spix.trainer.data import collate, crop_row
    from spix.trainer.model import build_model

    torch.manual_seed(seed)
    num_labels = read_manifest(shards_uri)["params"]["num_classes"] + 1
    model = build_model(preset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    steps, start = 0, time.perf_counter()
    for epoch in range(epochs):
        rows = list(iter_rows(shards_uri, "training"))
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            crops = [crop_row(rows[i], crop, num_labels, seed, epoch) for i in order[first : first + batch_size]]
            train_step(model, collate(crops).to(device), optimizer, loss, generator=generator)
            steps += 1
            if time_budget_s is not None and time.perf_counter() - start >= time_budget_s:
                return model, {"steps": steps, "seconds": time.perf_counter() - start}
    return model, {"steps": steps, "seconds": time.perf_counter() - start}
