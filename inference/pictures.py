"""Pictures made from embeddings, in torch on the features' device: the dominant-features picture, the soft
layers (quantised to uint8), their colour composite, and the palettes.

Every function takes a batch of same-size images (the images that shared a forward pass) and returns
tensors that are one device-to-host copy away from being written: uint8 pictures, uint8 layers.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch

from spix.inference.filters import GuidedFilter
from spix.inference.kmeans import squared_distances, weighted_kmeans

COLOUR_SPREAD = 2.5  # a projection at mean +- 2.5 standard deviations of the basis maps to 0 or 255
KMEANS_RESTARTS = 4


# ----------------------------------------------------------------------------- dominant features


def project(features: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Dense features (B, D, H, W) on principal axes: (features - mean) . components -> (B, n, H, W).

    mean (B, D) and components (B, n, D): one basis per image (a run-wide basis is simply repeated). The model's
    features are channels-last (D innermost), so (B, H*W, D) is a view of them and the projection one batched
    matrix product that reads them once.
    """
    batch, dim, height, width = features.shape
    pixels = features.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
    offsets = (components * mean[:, None, :]).sum(-1)  # (B, n)
    projected = torch.bmm(pixels, components.transpose(1, 2)) - offsets[:, None, :]  # (B, H*W, n)
    return projected.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


def feature_picture(
    features: torch.Tensor, smooth: GuidedFilter, mean: torch.Tensor, components: torch.Tensor, std: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """(B, H, W, 3) uint8 "dominant features" picture of dense features (B, D, H, W).

    The projections on 3 principal axes are mapped to 0..255 by one fixed rule, mean +- COLOUR_SPREAD standard
    deviations of the basis (so with a run-wide basis a colour means the same in every image), then smoothed by
    the guided filter `smooth` (guided by the image): flat where the image is flat, sharp at its edges. An axis
    without spread maps to mid-grey.
    """
    scale = torch.where(std > 0, 1.0 / (2 * COLOUR_SPREAD * std.clamp(min=1e-12)), torch.zeros_like(std))
    scaled = (project(features, mean, components) * scale[:, :, None, None] + 0.5).clamp(0.0, 1.0)
    return to_uint8(smooth(scaled, eps)).permute(0, 2, 3, 1)


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (clipped) -> uint8 0..255, rounded to nearest."""
    return torch.round(values.clamp(0.0, 1.0) * 255).to(torch.uint8)


# ----------------------------------------------------------------------------- soft layers


def superpixel_areas(superpixels: torch.Tensor, num_superpixels: int) -> torch.Tensor:
    """Pixel count of every superpixel slot: superpixels (B, H, W) ids -> (B, num_superpixels) float32."""
    batch = superpixels.shape[0]
    index = (superpixels.reshape(batch, -1) + torch.arange(batch, device=superpixels.device)[:, None] * num_superpixels).reshape(-1)
    areas = torch.zeros(batch * num_superpixels, device=superpixels.device)
    return areas.index_add_(0, index, torch.ones_like(index, dtype=torch.float32)).reshape(batch, num_superpixels)


def soft_memberships(embeddings: torch.Tensor, areas: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """(B, S, k) soft cluster memberships of superpixel embeddings (B, S, D); rows of real superpixels sum to 1.

    Weighted k-means (weights = `areas`; empty padding slots weigh 0) gives k centres per image; a superpixel's
    membership is softmax(-d^2 / T) over its squared distances to the centres, with T the median squared
    distance of a superpixel to its own centre (the typical cluster spread). Columns are ordered by total
    area, largest first. An image with fewer superpixels than k uses one cluster per superpixel and leaves
    the surplus columns at 0.
    """
    present = areas > 0
    centres, _ = weighted_kmeans(embeddings, areas, k, KMEANS_RESTARTS, seed)
    d2 = squared_distances(embeddings.float(), centres)  # (B, S, k)
    own = torch.where(present, d2.min(-1).values, torch.nan)
    temperature = own.nanmedian(-1).values  # (B,)
    fallback = torch.where(present[..., None], d2, torch.nan).nanmean((1, 2))
    temperature = torch.where(temperature > 1e-12, temperature, torch.where(fallback > 1e-12, fallback, 1.0))
    usable = torch.arange(k, device=areas.device)[None, :] < present.sum(1, keepdim=True)  # (B, k)
    logits = torch.where(usable[:, None, :], -d2 / temperature[:, None, None], -torch.inf)
    memberships = torch.softmax(logits, -1)
    totals = (memberships * areas[..., None]).sum(1)  # (B, k)
    order = torch.argsort(-totals, dim=1, stable=True)
    return torch.gather(memberships, 2, order[:, None, :].expand_as(memberships))


def soft_layers(memberships: torch.Tensor, superpixels: torch.Tensor, smooth: GuidedFilter, eps: float) -> torch.Tensor:
    """K soft layers (B, K, H, W) float32 in [0, 1] summing to 1 at every pixel, following the image's edges.

    Superpixel memberships (B, S, K) are painted to pixels, refined by the guided filter `smooth` (guided by
    the image), clipped to [0, 1] and renormalised; where filtering leaves nothing (all layers clipped to 0)
    the painted memberships are kept.
    """
    batch, height, width = superpixels.shape
    k = memberships.shape[2]
    index = superpixels.reshape(batch, 1, -1).expand(batch, k, height * width)
    painted = torch.gather(memberships.transpose(1, 2), 2, index).reshape(batch, k, height, width)
    filtered = smooth(painted, eps).clamp(0.0, 1.0)
    total = filtered.sum(1, keepdim=True)
    return torch.where(total > 1e-6, filtered / total.clamp(min=1e-6), painted)


def quantise_layers(layers: torch.Tensor) -> torch.Tensor:
    """Layers (B, K, H, W) summing to 1 per pixel -> uint8 that sum to exactly 255 per pixel.

    Cumulative rounding: the running sums of the layers (the last one exactly 1) are rounded to multiples of
    1/255 and differenced. Every running sum is off by at most 1/510, so every layer, decoded as q / 255, is
    within 1/255 of its value, none is negative, and the layers sum to exactly 1. A handful of tensor ops,
    where largest-remainder rounding would rank the layers of every pixel.
    """
    cumulative = layers.float().cumsum(1)
    edges = torch.round(cumulative / cumulative[:, -1:].clamp(min=1e-12) * 255)
    return torch.diff(edges, dim=1, prepend=torch.zeros_like(edges[:, :1])).to(torch.uint8)


def layer_composite(layers: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) soft layers -> (B, H, W, 3) uint8, each pixel the layer-weighted mix of the layers' colours."""
    mixed = torch.einsum("bkhw,kc->bhwc", layers.float(), colours.to(layers.device, torch.float32))
    return torch.round(mixed.clamp(0, 255)).to(torch.uint8)


# ----------------------------------------------------------------------------- palettes


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours with hues spaced by the golden ratio: any prefix is well spread."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    values = np.where(np.arange(n) % 2 == 0, 0.95, 0.75)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.8, v) for h, v in zip(hues, values)], dtype=np.float64).reshape(n, 3)
    return np.rint(rgb * 255).astype(np.uint8)


def label_palette() -> np.ndarray:
    """(256, 3) uint8 colours of class ids in label maps: 0 (unlabelled) black, then distinct colours."""
    return np.vstack([np.zeros((1, 3), np.uint8), distinct_colours(255)])
