"""The modified N-pair loss (DESIGN.md) on superpixel embeddings, and the paper's pixel-sampling baseline.

All losses reduce to one pairwise computation over a padded (B, N, D) set of embeddings with a
validity mask: pairs (i, j), i != j, of valid items of the same image (of the whole batch in the
superpixel-batch and superpixel-both variants). Pairs are ordered, so every
unordered pair is counted twice; the means are unaffected and the counts reported are ordered counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_DISTANCE = 50.0
LOG_2 = math.log(2.0)


def pair_losses(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses for (already clamped) squared distances d.

    l_pos = log((1 + e^d) / 2) = softplus(d) - log 2 (0 at d = 0, pulls same-label pairs together);
    l_neg = log(1 + e^{-d} / 2) = softplus(-d - log 2) (log 1.5 at d = 0, pushes other pairs apart).
    The softplus forms never overflow.
    """
    return F.softplus(d) - LOG_2, F.softplus(-d - LOG_2)


def squared_distances(emb: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) squared Euclidean distances clamped to [0, MAX_DISTANCE].

    ||a||^2 + ||b||^2 - 2 a.b (one baddbmm) keeps memory at B*N*N, with no B*N*N*D difference
    tensor, and, having no square root, a finite gradient where two embeddings coincide.
    """
    norms = emb.pow(2).sum(dim=-1)
    squared = torch.baddbmm(norms[:, :, None] + norms[:, None, :], emb, emb.transpose(1, 2), alpha=-2.0)
    return squared.clamp(0.0, MAX_DISTANCE)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values where mask is True; 0 (still differentiable) when mask is empty."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def pairwise_npair_loss(
    emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, image: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean(l_pos over positive pairs) + mean(l_neg over negative pairs) of valid items, per image.

    emb (B, N, D), labels (B, N), valid (B, N) bool. With `image` (B, N), the source image of each item,
    pairs from one image and pairs from two images each get their own two means, and the loss is the sum
    of both (the superpixel-both loss). Computed in float32 with autocast off: the distance of two bf16
    embeddings of norm ~10 would otherwise be off by whole units.
    """
    with torch.autocast(device_type=emb.device.type, enabled=False):
        d = squared_distances(emb.float())
        n = emb.shape[1]
        not_self = ~torch.eye(n, dtype=torch.bool, device=emb.device)
        pairs = valid[:, :, None] & valid[:, None, :] & not_self
        same = labels[:, :, None] == labels[:, None, :]
        positive, negative = pairs & same, pairs & ~same
        l_pos, l_neg = pair_losses(d)
        if image is None:
            loss = masked_mean(l_pos, positive) + masked_mean(l_neg, negative)
        else:
            same_image = image[:, :, None] == image[:, None, :]
            loss = sum(masked_mean(l_pos, positive & part) + masked_mean(l_neg, negative & part) for part in (same_image, ~same_image))
        detached = d.detach()
        stats = {
            "pos_dist": masked_mean(detached, positive),
            "neg_dist": masked_mean(detached, negative),
            "pos_pairs": positive.sum(),
            "neg_pairs": negative.sum(),
        }
    return loss, stats


def superpixel_npair_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    purity: torch.Tensor,
    mask: torch.Tensor,
    min_purity: float = 0.5,
    pairs: str = "image",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The modified N-pair loss over superpixels (B, S, D) from superpixel_pool.

    A superpixel takes part when it exists (mask), is labelled (label != 0) and its majority label
    covers at least min_purity of it. Returns the loss and detached statistics: "pos_dist",
    "neg_dist" (mean clamped squared distance of positive / negative pairs) and "pos_pairs",
    "neg_pairs" (ordered pair counts).

    `pairs` = "image" is DESIGN.md's loss. The within-image loss never compares images, so nothing makes
    a class's embedding agree from one image to the next, which is what a classifier or a search across
    images needs; two named variants add pairs across images: "batch" (`--loss superpixel-batch`) counts
    the batch as one image, so superpixels of different images with the same label are positive pairs
    too, and within-image pairs become a small share; "both" (`--loss superpixel-both`) gives the
    within-image pairs and the across-image pairs a term each.
    """
    valid = mask & (labels != 0) & (purity >= min_purity)
    if pairs == "image":
        return pairwise_npair_loss(emb, labels, valid)
    image = None
    if pairs == "both":
        image = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels).reshape(1, -1)
    emb, labels, valid = emb.reshape(1, -1, emb.shape[-1]), labels.reshape(1, -1), valid.reshape(1, -1)
    return pairwise_npair_loss(emb, labels, valid, image)


def sample_labelled_pixels(
    labels: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of labels (B, N), up to num_samples distinct labelled (!= 0) positions, uniformly.

    Every pixel gets a uniform random key, unlabelled ones +inf; the num_samples smallest keys are a
    uniform sample without replacement of the labelled pixels (all of them when there are fewer).
    Returns index (B, K) and valid (B, K), K = min(num_samples, N); valid is False on filler slots.
    """
    key_device = generator.device if generator is not None else labels.device
    keys = torch.rand(labels.shape, generator=generator, device=key_device).to(labels.device)
    keys = keys.masked_fill(labels == 0, math.inf)
    count = min(num_samples, labels.shape[1])
    chosen_keys, index = torch.topk(keys, count, dim=1, largest=False, sorted=False)
    return index, torch.isfinite(chosen_keys)


def pixel_npair_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's baseline: the same pairwise loss on num_samples labelled pixels per image.

    features (B, D, H, W), labels (B, H, W). Pairs are formed only within an image. Returns the loss
    and the statistics of superpixel_npair_loss.
    """
    flat_labels = labels.reshape(labels.shape[0], -1)
    index, valid = sample_labelled_pixels(flat_labels, num_samples, generator)
    flat_features = features.flatten(2)  # (B, D, H*W); a view for contiguous or channels_last input
    emb = torch.gather(flat_features, 2, index[:, None, :].expand(-1, features.shape[1], -1))
    return pairwise_npair_loss(emb.transpose(1, 2), torch.gather(flat_labels, 1, index), valid)
