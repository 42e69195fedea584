"""Pictures made from embeddings: the "dominant features" picture and edge-aware soft layers.

Everything is vectorised: box filters are differences of cumulative sums, the guided filter solves
one small linear system per pixel in a single batched call, k-means runs on superpixels (hundreds),
never on pixels.
"""

from __future__ import annotations

import colorsys
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

FEATURE_EPS = 1e-2  # guided-filter eps of the feature picture: smooths textures, keeps object edges
LAYER_EPS = 1e-3  # eps of the soft layers: follows image edges more closely
PCA_MAX_SAMPLES = 65536  # pixels used to fit the principal components of one image


# ----------------------------------------------------------------------------- guided filter


def window_sums(x: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Sum over the window [i - radius, i + radius] (clipped at the borders) along `axis`, in float64."""
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis] = 1
    cumulative = np.concatenate([np.zeros(shape), np.cumsum(x, axis=axis, dtype=np.float64)], axis=axis)
    index = np.arange(n)
    upper = np.minimum(index + radius + 1, n)
    lower = np.maximum(index - radius, 0)
    return np.take(cumulative, upper, axis=axis) - np.take(cumulative, lower, axis=axis)


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of x (H, W, ...) over the (2r+1) x (2r+1) window around each pixel, clipped at the borders."""
    height, width = x.shape[:2]
    ones_y = window_sums(np.ones(height), radius, 0)
    ones_x = window_sums(np.ones(width), radius, 0)
    counts = np.outer(ones_y, ones_x).reshape((height, width) + (1,) * (x.ndim - 2))
    return window_sums(window_sums(x, radius, 0), radius, 1) / counts


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resample x (H, W, ...) to `size` (height, width): mode "area" to shrink, "bilinear" to enlarge; float32."""
    height, width = x.shape[:2]
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(height, width, -1)
    channels = torch.from_numpy(flat).permute(2, 0, 1)[None]
    options = {"align_corners": False} if mode == "bilinear" else {}
    resized = torch.nn.functional.interpolate(channels, size=size, mode=mode, **options)
    return resized[0].permute(1, 2, 0).numpy().reshape(size + x.shape[2:])


def guided_filter(
    guide: np.ndarray, source: np.ndarray, radius: int, eps: float, subsample: int | None = None
) -> np.ndarray:
    """He et al.'s guided filter: smooth `source` (H, W, C) where the `guide` (H, W, G) is flat, keep its edges.

    Per window the output is a linear function of the guide, q = a . I + b, fitted to the source by
    ridge regression with penalty `eps` (guide values in [0, 1]); a colour guide (G = 3) solves a
    3 x 3 system per pixel. With `subsample` s > 1 the coefficients are fitted on an s-times smaller
    image (radius / s) and enlarged bilinearly before q is formed at full resolution: He and Sun's
    "fast guided filter", about s^2 times less work; by default s = radius // 4 (exact for radius < 8).
    Returns float64 (H, W, C).
    """
    subsample = max(1, radius // 4) if subsample is None else subsample
    guide = np.asarray(guide, dtype=np.float64)
    source = np.asarray(source, dtype=np.float64)
    if guide.ndim == 2:
        guide = guide[:, :, None]
    height, width = guide.shape[:2]
    small = (max(1, round(height / subsample)), max(1, round(width / subsample)))
    small_guide = resize(guide, small, "area") if subsample > 1 else guide
    small_source = resize(source, small, "area") if subsample > 1 else source
    a, b = guided_coefficients(small_guide, small_source, max(1, round(radius / subsample)), eps)
    if subsample > 1:
        a, b = resize(a, (height, width), "bilinear"), resize(b, (height, width), "bilinear")
    return np.einsum("hwgc,hwg->hwc", a, guide) + b


def guided_coefficients(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Window-averaged linear coefficients (a (H, W, G, C), b (H, W, C)) of the guided filter."""
    mean_guide = box_mean(guide, radius)
    mean_source = box_mean(source, radius)
    mean_gs = box_mean(guide[..., :, None] * source[..., None, :], radius)
    mean_gg = box_mean(guide[..., :, None] * guide[..., None, :], radius)
    cov_gs = mean_gs - mean_guide[..., :, None] * mean_source[..., None, :]
    var_g = mean_gg - mean_guide[..., :, None] * mean_guide[..., None, :]
    a = np.linalg.solve(var_g + eps * np.eye(guide.shape[2]), cov_gs)
    b = mean_source - np.einsum("hwgc,hwg->hwc", a, mean_guide)
    return box_mean(a, radius), box_mean(b, radius)


def smoothing_radius(height: int, width: int) -> int:
    """Default guided-filter radius: about 1/64 of the longer side (16 px at 1024), at least 1."""
    return max(1, round(max(height, width) / 64))


# ----------------------------------------------------------------------------- feature picture


def dense_principal_components(features: torch.Tensor, n: int = 3, max_samples: int = PCA_MAX_SAMPLES) -> torch.Tensor:
    """Project dense embeddings (D, H, W) on their first `n` principal components -> (H, W, n) float32.

    The components are fitted on at most `max_samples` pixels taken on a regular stride (the full
    image when it is smaller) and applied to every pixel. Each component's sign is fixed so that its
    projections have non-negative skew (the rarer, more distinct regions come out bright), which
    makes the picture deterministic. Runs on the features' device.
    """
    dim, height, width = features.shape
    pixels = features.reshape(dim, -1).T.float()
    sample = pixels[:: -(-pixels.shape[0] // max_samples)]  # ceil: at most max_samples rows
    mean = sample.mean(dim=0)
    centered = (sample - mean).double()
    covariance = centered.T @ centered / max(1, sample.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis = vectors[:, -n:].flip(1).float()
    projected = (pixels - mean) @ basis
    sign = torch.where((projected.double() ** 3).sum(dim=0) < 0, -1.0, 1.0).to(projected)
    return (projected * sign).reshape(height, width, -1)


def feature_picture(components: np.ndarray, rgb: np.ndarray, radius: int, eps: float = FEATURE_EPS) -> np.ndarray:
    """(H, W, 3) principal components -> uint8 RGB picture, edge-aware smoothed guided by the image.

    Each component is stretched so its 1st..99th percentile spans 0..1 (a constant component stays 0).
    """
    low, high = np.percentile(components, [1, 99], axis=(0, 1))
    spread = np.where(high > low, high - low, 1.0)
    scaled = np.clip((components - low) / spread, 0.0, 1.0)
    smoothed = guided_filter(rgb / 255.0, scaled, radius, eps)
    return np.rint(np.clip(smoothed, 0.0, 1.0) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- soft segmentation


def soft_assignments(embeddings: np.ndarray, weights: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(S, k) soft cluster memberships of superpixel embeddings; rows sum to 1.

    k-means (weighted by `weights`, e.g. superpixel areas) gives centres; a superpixel's membership is
    softmax(-d^2 / T) over its squared distances to the centres, with T the median squared distance of
    a superpixel to its own centre (the typical cluster spread). Columns are ordered by total weight,
    largest first; with fewer distinct superpixels than k the surplus columns stay 0.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    clusters = min(k, len(embeddings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than clusters
        kmeans = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(embeddings, sample_weight=weights)
    centres = kmeans.cluster_centers_
    d2 = (
        np.einsum("sd,sd->s", embeddings, embeddings)[:, None]
        + np.einsum("kd,kd->k", centres, centres)[None, :]
        - 2.0 * embeddings @ centres.T
    ).clip(min=0.0)
    temperature = float(np.median(d2.min(axis=1)))
    if temperature <= 1e-12:
        temperature = float(d2.mean()) or 1.0
    logits = -d2 / temperature
    memberships = np.exp(logits - logits.max(axis=1, keepdims=True))
    memberships /= memberships.sum(axis=1, keepdims=True)
    order = np.argsort(-(memberships * np.asarray(weights, dtype=np.float64)[:, None]).sum(axis=0), kind="stable")
    padded = np.zeros((len(embeddings), k))
    padded[:, :clusters] = memberships[:, order]
    return padded


def soft_layers(
    embeddings: np.ndarray, superpixels: np.ndarray, rgb: np.ndarray, k: int, radius: int,
    eps: float = LAYER_EPS, seed: int = 0,
) -> np.ndarray:
    """K soft layers (K, H, W) float32 in [0, 1] summing to 1 at every pixel, following image edges.

    Superpixel memberships (soft_assignments) are painted to pixels, refined by the guided filter with
    the image as guide, clipped to [0, 1] and renormalised; where filtering leaves nothing (all
    layers clipped to 0) the painted memberships are kept.
    """
    areas = np.bincount(superpixels.ravel(), minlength=len(embeddings))
    painted = soft_assignments(embeddings, areas, k, seed)[superpixels]  # (H, W, K)
    filtered = np.clip(guided_filter(rgb / 255.0, painted, radius, eps), 0.0, 1.0)
    total = filtered.sum(axis=2, keepdims=True)
    layers = np.where(total > 1e-6, filtered / np.maximum(total, 1e-6), painted)
    return np.ascontiguousarray(layers.transpose(2, 0, 1), dtype=np.float32)


def label_palette() -> np.ndarray:
    """(256, 3) uint8 colours of class ids in label maps: 0 (unlabelled) black, then distinct colours."""
    return np.vstack([np.zeros((1, 3), np.uint8), distinct_colours(255)])


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours with hues spaced by the golden ratio: any prefix is well spread."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    values = np.where(np.arange(n) % 2 == 0, 0.95, 0.75)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.8, v) for h, v in zip(hues, values)], dtype=np.float64).reshape(n, 3)
    return np.rint(rgb * 255).astype(np.uint8)


def layer_composite(layers: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(K, H, W) soft layers -> uint8 RGB, each pixel the layer-weighted mix of the layers' colours."""
    mixed = np.einsum("khw,kc->hwc", layers, colours.astype(np.float32))
    return np.rint(np.clip(mixed, 0, 255)).astype(np.uint8)
