"""Guided filter, principal-component picture and soft layers against brute force and known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from spix.pipeline.postprocess import (
    box_mean,
    dense_principal_components,
    distinct_colours,
    feature_picture,
    guided_filter,
    label_palette,
    layer_composite,
    soft_assignments,
    soft_layers,
)


def brute_box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1].mean(axis=(0, 1))
    return out


def brute_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al. written out per window: a ridge fit of the source on the guide, then averaged per pixel."""
    height, width, g = guide.shape
    a = np.zeros((height, width, g, source.shape[2]))
    b = np.zeros((height, width, source.shape[2]))
    for i in range(height):
        for j in range(width):
            window = (slice(max(0, i - radius), i + radius + 1), slice(max(0, j - radius), j + radius + 1))
            I = guide[window].reshape(-1, g)
            p = source[window].reshape(-1, source.shape[2])
            mu, pbar = I.mean(axis=0), p.mean(axis=0)
            cov_ip = (I - mu).T @ (p - pbar) / len(I)
            sigma = (I - mu).T @ (I - mu) / len(I)
            a[i, j] = np.linalg.solve(sigma + eps * np.eye(g), cov_ip)
            b[i, j] = pbar - mu @ a[i, j]
    mean_a, mean_b = brute_box_mean(a, radius), brute_box_mean(b, radius)
    return np.einsum("hwgc,hwg->hwc", mean_a, guide) + mean_b


@pytest.mark.parametrize("radius", [0, 1, 3, 20])
def test_box_mean_matches_brute_force(radius: int) -> None:
    x = np.random.default_rng(0).random((9, 13, 2))
    np.testing.assert_allclose(box_mean(x, radius), brute_box_mean(x, radius), atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_matches_per_window_ridge_fits(channels: int) -> None:
    rng = np.random.default_rng(1)
    guide = rng.random((12, 15, channels))
    source = rng.random((12, 15, 2))
    expected = brute_guided_filter(guide, source, 2, 0.01)
    np.testing.assert_allclose(guided_filter(guide, source, 2, 0.01, subsample=1), expected, atol=1e-10)


def test_guided_filter_keeps_an_edge_that_a_box_blur_smears() -> None:
    """A noisy step whose edge is in the guide: the filter removes the noise but keeps the jump."""
    rng = np.random.default_rng(2)
    guide = np.zeros((40, 40, 3))
    guide[:, 20:] = 1.0
    clean = guide[:, :, :1].copy()
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    filtered = guided_filter(guide, noisy, 4, 1e-3, subsample=1)
    blurred = box_mean(noisy, 4)
    assert np.abs(filtered - clean).mean() < 0.5 * np.abs(noisy - clean).mean()
    jump = filtered[:, 20].mean() - filtered[:, 19].mean()
    assert jump > 0.9 and blurred[:, 20].mean() - blurred[:, 19].mean() < 0.2
    np.testing.assert_allclose(guided_filter(guide, np.full((40, 40, 2), 0.3), 4, 1e-3), 0.3, atol=1e-9)


def test_fast_guided_filter_is_close_to_the_exact_one() -> None:
    """He and Sun's subsampled version approximates the exact filter on smooth inputs (worst at the borders)."""
    y, x = np.mgrid[0:96, 0:128] / 128.0
    guide = np.dstack([x, y, np.sin(3 * x + 2 * y) / 2 + 0.5])
    source = np.dstack([np.sin(6 * x) * np.cos(4 * y), x * y])
    error = np.abs(guided_filter(guide, source, 8, 1e-2, subsample=4) - guided_filter(guide, source, 8, 1e-2, subsample=1))
    assert error.mean() < 0.01 and np.percentile(error, 99) < 0.03


def test_principal_components_match_sklearn_up_to_sign() -> None:
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(20 * 30, 3)) * np.array([4.0, 2.0, 1.0])  # three directions of distinct variance
    pixels = latent @ rng.normal(size=(3, 16)) + rng.normal(0, 0.1, (600, 16))
    features = torch.from_numpy(pixels.T.reshape(16, 20, 30).astype(np.float32))
    ours = dense_principal_components(features, 3).numpy().reshape(-1, 3)
    reference = PCA(3).fit_transform(pixels)
    np.testing.assert_allclose(np.abs(ours), np.abs(reference), atol=2e-3 * np.abs(reference).max())
    skew = (ours.astype(np.float64) ** 3).sum(axis=0)
    assert (skew >= 0).all(), "signs are fixed to non-negative skew"


def test_feature_picture_is_uint8_rgb_in_range_and_not_constant() -> None:
    rng = np.random.default_rng(4)
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, 24:] = 200
    components = np.where(rgb[:, :, :1] > 0, 1.0, -1.0) * np.array([1.0, 0.5, -0.2]) + rng.normal(0, 0.05, (32, 48, 3))
    picture = feature_picture(components.astype(np.float32), rgb, radius=3)
    assert picture.dtype == np.uint8 and picture.shape == (32, 48, 3)
    assert picture.std() > 20, "the two halves must look different"
    assert picture[:, :20, 0].mean() < 60 and picture[:, 28:, 0].mean() > 190
    flat = feature_picture(np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), 90, np.uint8), radius=2)
    assert flat.dtype == np.uint8 and (flat == flat.flat[0]).all()


def test_soft_assignments_find_separated_clusters_and_order_them_by_weight() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 10, (3, 8))
    truth = np.repeat([0, 1, 2], [30, 12, 6])
    embeddings = centres[truth] + rng.normal(0, 0.3, (len(truth), 8))
    memberships = soft_assignments(embeddings, np.ones(len(truth)), k=3)
    np.testing.assert_allclose(memberships.sum(axis=1), 1.0, atol=1e-12)
    assert adjusted_rand_score(truth, memberships.argmax(axis=1)) == 1.0
    assert list(memberships.argmax(axis=1)[[0, 30, 42]]) == [0, 1, 2], "largest cluster first"
    assert memberships.max(axis=1).min() > 0.9, "well separated clusters are nearly hard"


def test_soft_assignments_with_fewer_superpixels_than_layers() -> None:
    memberships = soft_assignments(np.eye(2, 4), np.ones(2), k=5)
    assert memberships.shape == (2, 5)
    np.testing.assert_allclose(memberships.sum(axis=1), 1.0)
    assert (memberships[:, 2:] == 0).all()


@pytest.mark.parametrize("shape", [(40, 56), (1, 1), (3, 4)])
def test_soft_layers_are_a_partition_of_unity_that_follows_the_regions(shape: tuple[int, int]) -> None:
    height, width = shape
    rng = np.random.default_rng(6)
    superpixels = (np.arange(height)[:, None] // max(1, height // 4) * 8 + np.arange(width)[None, :] // max(1, width // 8))
    superpixels = np.unique(superpixels, return_inverse=True)[1].reshape(shape).astype(np.uint16)
    count = int(superpixels.max()) + 1
    region = (np.arange(width)[None, :] >= width // 2).repeat(height, 0)  # left / right halves
    flat = superpixels.ravel()
    sp_region = np.bincount(flat, region.ravel(), count) / np.bincount(flat, minlength=count) > 0.5
    embeddings = np.where(sp_region[:, None], 5.0, -5.0) + rng.normal(0, 0.1, (count, 16))
    rgb = np.where(region[:, :, None], 220, 30).astype(np.uint8).repeat(3, axis=2)
    layers = soft_layers(embeddings, superpixels, rgb, k=4, radius=2)
    assert layers.shape == (4, height, width) and layers.dtype == np.float32
    assert layers.min() >= 0 and layers.max() <= 1
    np.testing.assert_allclose(layers.sum(axis=0), 1.0, atol=1e-5)
    if width > 8:  # k-means may split a region (k > 2) but no layer may straddle the two
        hard = layers.argmax(axis=0)
        for label in np.unique(hard):
            right_share = region[hard == label].mean()
            assert max(right_share, 1 - right_share) > 0.95


def test_composite_and_palettes() -> None:
    colours = distinct_colours(7)
    assert len({tuple(c) for c in colours}) == 7
    one_hot = np.zeros((3, 2, 2), np.float32)
    one_hot[[0, 1, 2, 2], [0, 0, 1, 1], [0, 1, 0, 1]] = 1.0
    composite = layer_composite(one_hot, colours[:3])
    np.testing.assert_array_equal(composite[0, 0], colours[0])
    np.testing.assert_array_equal(composite[1, 1], colours[2])
    palette = label_palette()
    assert palette.shape == (256, 3) and (palette[0] == 0).all() and len({tuple(c) for c in palette}) == 256
