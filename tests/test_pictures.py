"""The numeric core of `spix infer` (no Ray, no model): box means, guided filter, k-means, the feature picture,
soft layers and their quantisation, checked against brute force, scikit-learn and known answers, and for the
filters' visible effect: noise gone where the image is flat, edges kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from spix.configs import defaults
from spix.inference.basis import FeatureBasis, image_basis
from spix.inference.filters import GuidedFilter, box_mean, guided_filter
from spix.inference.kmeans import weighted_kmeans
from spix.inference.pictures import (
    COLOUR_SPREAD,
    distinct_colours,
    feature_picture,
    label_palette,
    layer_composite,
    quantise_layers,
    soft_layers,
    soft_memberships,
    superpixel_areas,
)

INFER = defaults("infer")


def nchw(x: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy -> (1, C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]


def hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


def brute_box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1].mean(axis=(0, 1))
    return out


def brute_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al. written out per window in float64: a ridge fit of the source on the guide, then averaged per pixel."""
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
    return np.einsum("hwgc,hwg->hwc", brute_box_mean(a, radius), guide) + brute_box_mean(b, radius)


# ----------------------------------------------------------------------------- box mean and guided filter


@pytest.mark.parametrize("radius", [0, 1, 3, 20])
def test_box_mean_matches_brute_force(radius: int) -> None:
    x = np.random.default_rng(0).random((9, 13, 2))
    np.testing.assert_allclose(hwc(box_mean(nchw(x), radius)), brute_box_mean(x, radius), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_matches_per_window_ridge_fits(channels: int) -> None:
    rng = np.random.default_rng(1)
    guide = rng.random((12, 15, channels))
    source = rng.random((12, 15, 2))
    expected = brute_guided_filter(guide, source, 2, 0.01)
    np.testing.assert_allclose(hwc(guided_filter(nchw(guide), nchw(source), 2, 0.01, subsample=1)), expected, atol=2e-5)


def test_guided_filter_of_radius_one_matches_per_window_ridge_fits() -> None:
    """Radius 1 (the default for images up to 95 pixels a side) filters 3 x 3 windows, by default and exact."""
    rng = np.random.default_rng(4)
    guide, source = rng.random((9, 11, 3)), rng.random((9, 11, 2))
    expected = brute_guided_filter(guide, source, 1, 0.01)
    for subsample in (None, 1):
        np.testing.assert_allclose(hwc(guided_filter(nchw(guide), nchw(source), 1, 0.01, subsample)), expected, atol=2e-5)


def test_float32_guided_filter_keeps_precision_on_a_bright_low_contrast_image() -> None:
    """A bright, nearly flat guide (sky-like: 0.92 +- 0.02) over 600 columns with a small eps, where
    E[I^2] - E[I]^2 cancels worst: float32 stays within 1e-4 of the float64 definition (3e-3 without
    centring the guide first)."""
    rng = np.random.default_rng(11)
    guide = np.clip(0.92 + 0.02 * rng.normal(0, 1, (8, 600, 3)), 0, 1)
    source = np.clip(0.5 + (guide[:, :, :2] - 0.92) * 10 + rng.normal(0, 0.02, (8, 600, 2)), 0, 1)
    expected = brute_guided_filter(guide, source, 3, 1e-4)
    assert np.abs(hwc(guided_filter(nchw(guide), nchw(source), 3, 1e-4, subsample=1)) - expected).max() < 1e-4


def test_guided_filter_keeps_an_edge_that_a_box_blur_smears() -> None:
    """A noisy step whose edge is in the guide: the filter removes the noise but keeps the jump."""
    rng = np.random.default_rng(2)
    guide = np.zeros((40, 40, 3))
    guide[:, 20:] = 1.0
    clean = guide[:, :, :1].copy()
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    filtered = hwc(guided_filter(nchw(guide), nchw(noisy), 4, 1e-3, subsample=1))
    blurred = brute_box_mean(noisy, 4)
    assert np.abs(filtered - clean).mean() < 0.5 * np.abs(noisy - clean).mean()
    assert filtered[:, 20].mean() - filtered[:, 19].mean() > 0.9 and blurred[:, 20].mean() - blurred[:, 19].mean() < 0.2
    constant = guided_filter(nchw(guide), torch.full((1, 2, 40, 40), 0.3), 4, 1e-3)
    np.testing.assert_allclose(constant.numpy(), 0.3, atol=1e-6)


def test_fast_guided_filter_is_close_to_the_exact_one() -> None:
    """He and Sun's subsampled version approximates the exact filter on smooth inputs (worst at the borders)."""
    y, x = np.mgrid[0:96, 0:128] / 128.0
    guide = nchw(np.dstack([x, y, np.sin(3 * x + 2 * y) / 2 + 0.5]))
    source = nchw(np.dstack([np.sin(6 * x) * np.cos(4 * y), x * y]))
    error = (guided_filter(guide, source, 8, 1e-2, subsample=4) - guided_filter(guide, source, 8, 1e-2, subsample=1)).abs()
    assert error.mean() < 0.01 and error.quantile(0.99) < 0.03


def test_one_guide_serves_several_sources_like_separate_filters() -> None:
    rng = np.random.default_rng(3)
    guide, first, second = nchw(rng.random((20, 24, 3))), nchw(rng.random((20, 24, 2))), nchw(rng.random((20, 24, 4)))
    shared = GuidedFilter(guide, 5)
    torch.testing.assert_close(shared(first, 1e-2), guided_filter(guide, first, 5, 1e-2))
    torch.testing.assert_close(shared(second, 1e-3), guided_filter(guide, second, 5, 1e-3))


# ----------------------------------------------------------------------------- k-means


def blobs(rng: np.random.Generator, count: int, dim: int, centres: int, spread: float) -> np.ndarray:
    return rng.normal(0, 3, (centres, dim))[rng.integers(0, centres, count)] + rng.normal(0, spread, (count, dim))


@pytest.mark.slow
def test_weighted_kmeans_reaches_sklearns_inertia() -> None:
    """Same problems, same number of restarts: our inertia is as low as scikit-learn's, up to seeding luck."""
    rng = np.random.default_rng(4)
    ratios = []
    for seed in range(6):
        points = blobs(rng, 300, 16, 8, 1.5)
        weights = rng.random(300) * 10
        _, inertia = weighted_kmeans(torch.tensor(points)[None], torch.tensor(weights)[None], 5, restarts=4, seed=seed)
        reference = KMeans(5, n_init=4, random_state=seed).fit(points, sample_weight=weights).inertia_
        ratios.append(float(inertia[0]) / reference)
    assert max(ratios) < 1.1 and np.mean(ratios) < 1.03, ratios


def test_weighted_kmeans_inertia_is_the_weighted_distance_to_the_returned_centres() -> None:
    rng = np.random.default_rng(5)
    points, weights = blobs(rng, 200, 8, 4, 1.0), rng.random(200)
    centres, inertia = weighted_kmeans(torch.tensor(points)[None], torch.tensor(weights)[None], 4)
    d2 = ((points[:, None, :] - centres[0].double().numpy()[None]) ** 2).sum(-1)
    assert float(inertia[0]) == pytest.approx((d2.min(1) * weights).sum(), rel=1e-4)


def test_weighted_kmeans_of_a_padded_batch_equals_each_problem_alone() -> None:
    """Images with different superpixel counts share one call (zero-weight padding): same centres as alone."""
    rng = np.random.default_rng(6)
    problems = [blobs(rng, count, 8, 3, 0.2) for count in (50, 80)]
    padded = torch.zeros(2, 80, 8)
    weights = torch.zeros(2, 80)
    for index, points in enumerate(problems):
        padded[index, : len(points)] = torch.tensor(points)
        weights[index, : len(points)] = 1.0
    together, _ = weighted_kmeans(padded, weights, 3, seed=1)
    for index, points in enumerate(problems):
        alone, _ = weighted_kmeans(torch.tensor(points, dtype=torch.float32)[None], torch.ones(1, len(points)), 3, seed=1)
        torch.testing.assert_close(together[index], alone[0], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- soft memberships and layers


def test_soft_memberships_find_separated_clusters_and_order_them_by_area() -> None:
    rng = np.random.default_rng(7)
    truth = np.repeat([0, 1, 2], [30, 12, 6])
    embeddings = rng.normal(0, 10, (3, 8))[truth] + rng.normal(0, 0.3, (len(truth), 8))
    memberships = soft_memberships(torch.tensor(embeddings, dtype=torch.float32)[None], torch.ones(1, len(truth)), 3)[0].numpy()
    np.testing.assert_allclose(memberships.sum(axis=1), 1.0, atol=1e-6)
    assert adjusted_rand_score(truth, memberships.argmax(axis=1)) == 1.0
    assert list(memberships.argmax(axis=1)[[0, 30, 42]]) == [0, 1, 2], "largest cluster first"
    assert memberships.max(axis=1).min() > 0.9, "well separated clusters are nearly hard"


def test_soft_memberships_are_a_softmax_over_distances_at_the_median_spread() -> None:
    """Against the formula in numpy, from the k-means centres: softmax(-d^2 / T), T the median over superpixels
    of the squared distance to the nearest centre, columns by total area."""
    rng = np.random.default_rng(13)
    embeddings = blobs(rng, 120, 6, 4, 1.0)
    areas = rng.integers(1, 50, 120).astype(np.float64)
    points, weights = torch.tensor(embeddings, dtype=torch.float32)[None], torch.tensor(areas, dtype=torch.float32)[None]
    centres = weighted_kmeans(points, weights, 3, restarts=4, seed=0)[0][0].double().numpy()
    d2 = ((embeddings[:, None, :] - centres[None]) ** 2).sum(-1)
    temperature = np.sort(d2.min(1))[(len(d2) - 1) // 2]  # torch's median: the lower middle value
    expected = np.exp(-d2 / temperature)
    expected /= expected.sum(1, keepdims=True)
    expected = expected[:, np.argsort(-(expected * areas[:, None]).sum(0), kind="stable")]
    np.testing.assert_allclose(soft_memberships(points, weights, 3, seed=0)[0].numpy(), expected, atol=2e-4)


def test_soft_memberships_with_fewer_superpixels_than_layers() -> None:
    embeddings = torch.zeros(1, 4, 4)
    embeddings[0, :2] = torch.eye(2, 4)
    areas = torch.tensor([[5.0, 7.0, 0.0, 0.0]])  # two real superpixels, two padding slots
    memberships = soft_memberships(embeddings, areas, 5)[0]
    torch.testing.assert_close(memberships[:2].sum(1), torch.ones(2))
    assert (memberships[:2, 2:] == 0).all() and memberships[1, 0] > 0.5, "larger superpixel's layer first"


def test_superpixel_areas_count_pixels_per_image() -> None:
    ids = torch.tensor([[[0, 0, 1], [2, 2, 2]], [[1, 1, 1], [1, 0, 0]]])
    torch.testing.assert_close(superpixel_areas(ids, 4), torch.tensor([[2.0, 1, 3, 0], [2, 4, 0, 0]]))


def two_region_scene(height: int = 40, width: int = 60, edge: int = 30, strip: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a sharp vertical edge, superpixels that are vertical strips (one straddling the edge),
    and which strip lies left of the edge (1), right (0) or across it (0.5)."""
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[:, edge:] = 210
    columns = np.arange(width) - (edge - strip // 2)  # the strip [edge - strip/2, edge + strip/2) straddles the edge
    strips = np.floor_divide(columns, strip)
    superpixels = np.broadcast_to(strips - strips.min(), (height, width)).astype(np.int64)
    left = np.array([1.0 if s_end <= edge else 0.0 if s_start >= edge else 0.5
                     for s_start, s_end in ((np.where(superpixels[0] == s)[0][[0, -1]] + [0, 1]) for s in range(superpixels.max() + 1))])
    return rgb, superpixels, left


def test_soft_layers_split_a_superpixel_along_the_image_edge() -> None:
    """A superpixel straddling a sharp edge, with a membership halfway between the two sides: after the guided
    filter its pixels left of the edge belong mostly to the left layer and those right of it to the right layer
    (painted, all its pixels would be 0.5 / 0.5)."""
    rgb, superpixels, left = two_region_scene()
    memberships = torch.tensor(np.stack([left, 1 - left], 1), dtype=torch.float32)[None]
    ids = torch.from_numpy(superpixels)[None]
    smooth = GuidedFilter(nchw(rgb / 255.0), 6)
    layers = soft_layers(memberships, ids, smooth, INFER["layer_eps"])[0].numpy()
    torch.testing.assert_close(torch.from_numpy(layers.sum(0)), torch.ones(40, 60))
    straddler = superpixels[0, 30]
    cols = np.where(superpixels[0] == straddler)[0]
    assert np.isclose(left[straddler], 0.5) and cols.min() < 30 <= cols.max()
    left_part, right_part = layers[:, :, cols[cols < 30]], layers[:, :, cols[cols >= 30]]
    assert (left_part[0] > 0.55).all() and (right_part[1] > 0.55).all(), "each part's pixels go with their side"
    assert left_part[0].mean() - right_part[0].mean() > 0.3


def test_soft_layers_stay_a_partition_of_unity_where_the_filter_overshoots() -> None:
    """A ramp image under near-hard memberships of 3 layers whose boundaries are not image edges: the filter's
    local linear fits leave [0, 1], and clipping alone would break the sum (by 0.06 here); after clipping and
    renormalising every pixel's layers are in [0, 1] and sum to 1."""
    ramp = np.linspace(0, 1, 40)[None, :, None].repeat(30, 0).repeat(3, 2)
    superpixels = torch.from_numpy((np.arange(30)[:, None] // 5) * 8 + np.arange(40)[None, :] // 5)[None]
    memberships = torch.softmax(torch.tensor(np.random.default_rng(15).normal(0, 4, (1, 48, 3)), dtype=torch.float32), -1)
    smooth = GuidedFilter(nchw(ramp), 4)
    painted = torch.gather(memberships.transpose(1, 2), 2, superpixels.reshape(1, 1, -1).expand(1, 3, -1)).reshape(1, 3, 30, 40)
    clipped = smooth(painted, INFER["layer_eps"]).clamp(0, 1)
    assert (clipped.sum(1) - 1).abs().max() > 0.03, "the case must overshoot"
    layers = soft_layers(memberships, superpixels, smooth, INFER["layer_eps"])
    assert layers.min() >= 0 and layers.max() <= 1
    torch.testing.assert_close(layers.sum(1), torch.ones(1, 30, 40))


def test_soft_layers_smooth_noisy_memberships_where_the_image_is_flat() -> None:
    """Superpixels of a flat region with noisy memberships: the filtered layers vary much less inside the
    region, and the jump at the image edge stays."""
    height, width, edge, block = 48, 96, 48, 4
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[:, edge:] = 210
    rows, cols = np.mgrid[0:height, 0:width] // block
    superpixels = rows * (width // block) + cols  # 4 x 4 blocks, none across the edge
    left = (np.arange(superpixels.max() + 1) % (width // block)) * block < edge
    rng = np.random.default_rng(8)
    noisy = np.clip(0.3 + 0.4 * left + rng.normal(0, 0.1, left.shape), 0, 1)  # 0.7 left, 0.3 right, +- noise
    memberships = torch.tensor(np.stack([noisy, 1 - noisy], 1), dtype=torch.float32)[None]
    layers = soft_layers(memberships, torch.from_numpy(superpixels)[None], GuidedFilter(nchw(rgb / 255.0), 6), INFER["layer_eps"])[0].numpy()
    painted = noisy[superpixels]
    for inside in (np.s_[8:40, 8:40], np.s_[8:40, 56:88]):  # well inside the left and the right region
        assert layers[0][inside].std() < 0.4 * painted[inside].std()
    assert layers[0][:, 47].mean() - layers[0][:, 48].mean() > 0.3


def test_quantised_layers_sum_to_255_and_stay_within_one_step_of_each_value() -> None:
    """Against the definition written as per-pixel loops: running sums rounded to 1/255, differenced."""
    rng = np.random.default_rng(9)
    layers = torch.softmax(torch.tensor(rng.normal(0, 2, (2, 4, 6, 7)), dtype=torch.float32), 1)
    layers[0, :, 0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    layers[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    quantised = quantise_layers(layers).numpy()
    expected = np.zeros(layers.shape, np.uint8)
    for b, y, x in np.ndindex(2, 6, 7):
        running, previous = 0.0, 0
        for k in range(4):
            running += float(layers[b, k, y, x])
            edge = int(np.round(running / float(layers[b, :, y, x].sum()) * 255))
            expected[b, k, y, x], previous = edge - previous, edge
    np.testing.assert_array_equal(quantised, expected)
    assert (quantised.astype(int).sum(1) == 255).all()
    assert np.abs(quantised / 255.0 - layers.numpy()).max() < 1 / 255
    assert list(quantised[0, :, 0, 0]) == [64, 64, 63, 64] and list(quantised[0, :, 0, 1]) == [255, 0, 0, 0]


# ----------------------------------------------------------------------------- feature picture and basis


def test_feature_picture_maps_mean_and_spread_to_fixed_colours() -> None:
    """Constant features at the mean, and at mean + COLOUR_SPREAD std along an axis: mid-grey, then 255."""
    dim = 6
    mean, components, std = torch.arange(dim, dtype=torch.float32), torch.eye(3, dim), torch.tensor([0.5, 2.0, 1.0])
    features = mean[None, :, None, None].repeat(2, 1, 5, 7)
    features[1, 0] += COLOUR_SPREAD * 0.5  # +2.5 std along the first axis
    features[1, 1] -= COLOUR_SPREAD * 2.0 * 0.5  # -1.25 std along the second
    smooth = GuidedFilter(torch.rand(2, 3, 5, 7), 2)
    picture = feature_picture(features, smooth, mean.expand(2, dim), components.expand(2, 3, dim), std.expand(2, 3), INFER["feature_eps"])
    assert picture.shape == (2, 5, 7, 3) and picture.dtype == torch.uint8
    assert (picture[0] == 128).all()
    assert (picture[1, ..., 0] == 255).all() and (picture[1, ..., 1] == 64).all() and (picture[1, ..., 2] == 128).all()


def test_feature_picture_loses_noise_in_flat_regions_and_keeps_the_image_edge() -> None:
    """Noisy features with a step where the image has its edge: the picture is smooth on both sides of the edge
    (noise much lower than in the unfiltered projection) and the step stays sharp."""
    rng = np.random.default_rng(10)
    height, width, edge, dim = 40, 64, 32, 8
    rgb = np.full((height, width, 3), 30, np.uint8)
    rgb[:, edge:] = 220
    step = np.where(np.arange(width) >= edge, 1.0, -1.0)[None, :].repeat(height, 0)
    features = rng.normal(0, 0.4, (dim, height, width))
    features[0] += step
    mean, components, std = torch.zeros(1, dim), torch.eye(3, dim)[None], torch.ones(1, 3)
    picture = feature_picture(torch.tensor(features, dtype=torch.float32)[None], GuidedFilter(nchw(rgb / 255.0), 4),
                              mean, components, std, INFER["feature_eps"])[0, ..., 0].numpy().astype(float)
    unfiltered = np.clip(features[0] / (2 * COLOUR_SPREAD) + 0.5, 0, 1) * 255  # the same colour rule, no filter
    flat = (slice(4, 36), slice(4, 28))
    assert picture[flat].std() < 0.3 * unfiltered[flat].std()
    assert abs(picture[flat].mean() - unfiltered[flat].mean()) < 3
    jump = picture[:, edge].mean() - picture[:, edge - 1].mean()
    assert jump > 0.9 * (unfiltered[:, edge + 2 :].mean() - unfiltered[:, : edge - 2].mean())


def test_principal_basis_matches_sklearn_pca_on_area_repeated_superpixels() -> None:
    """The basis (EmbeddingMoments.principal_basis, via image_basis) is PCA of the superpixel embeddings with
    each repeated as many times as it has pixels; std is the population spread along each axis."""
    rng = np.random.default_rng(12)
    latent = rng.normal(size=(60, 3)) * np.array([4.0, 2.0, 1.0])
    embeddings = latent @ rng.normal(size=(3, 10)) + rng.normal(0, 0.05, (60, 10))
    areas = rng.integers(1, 6, 60)
    basis = image_basis(embeddings, areas)
    repeated = np.repeat(embeddings, areas, axis=0)
    reference = PCA(3).fit(repeated)
    np.testing.assert_allclose(np.abs(basis.components), np.abs(reference.components_), atol=1e-8)
    np.testing.assert_allclose(basis.mean, repeated.mean(0), atol=1e-10)
    np.testing.assert_allclose(basis.std, np.sqrt(reference.explained_variance_ * (len(repeated) - 1) / len(repeated)), rtol=1e-8)
    record = FeatureBasis.from_record(basis.to_record(), 10, "test")
    assert record == basis


def test_moments_merged_from_two_workers_give_the_weighted_mean_and_covariance_of_all() -> None:
    """Workers' moments add up (EmbeddingMoments.merge): the basis of two merged halves is that of the
    area-weighted mean and covariance of all embeddings, computed by numpy (np.average, np.cov aweights)."""
    from spix.trainer.embedding import EmbeddingMoments

    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(50, 6)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    areas = rng.integers(1, 9, 50)
    first, second = EmbeddingMoments(6), EmbeddingMoments(6)
    first.add(embeddings[:20], areas[:20])
    second.add(embeddings[20:], areas[20:])
    first.merge(second)
    basis = first.principal_basis(3)
    covariance = np.cov(embeddings.T, aweights=areas, bias=True)
    values, vectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(basis["mean"], np.average(embeddings, axis=0, weights=areas), atol=1e-10)
    np.testing.assert_allclose(basis["std"], np.sqrt(values[::-1][:3]), rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.array(basis["components"]) @ vectors[:, ::-1][:, :3]), np.eye(3), atol=1e-8)


def test_each_basis_axis_points_with_its_largest_entry_positive() -> None:
    """An eigenvector's sign is arbitrary; the basis fixes it (largest |entry| positive), so a colour of the
    feature picture keeps its meaning across runs and machines. Several data sets, three axes each."""
    rng = np.random.default_rng(8)
    for _ in range(6):
        embeddings = rng.normal(size=(40, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2])
        components = np.array(image_basis(embeddings @ np.linalg.qr(rng.normal(size=(5, 5)))[0], np.ones(40)).components)
        largest = components[np.arange(3), np.abs(components).argmax(axis=1)]
        assert (largest > 0).all()


def test_a_malformed_basis_is_refused_with_its_shapes() -> None:
    from spix.inference.settings import InferInputError

    with pytest.raises(InferInputError, match="shapes"):
        FeatureBasis.from_record({"mean": [0.0] * 4, "components": [[0.0] * 4] * 3, "std": [1.0] * 3}, 5, "model.json")


# ----------------------------------------------------------------------------- colours


def test_composite_and_palettes() -> None:
    colours = distinct_colours(7)
    assert len({tuple(c) for c in colours}) == 7
    one_hot = torch.zeros(1, 3, 2, 2)
    one_hot[0, [0, 1, 2, 2], [0, 0, 1, 1], [0, 1, 0, 1]] = 1.0
    composite = layer_composite(one_hot, torch.from_numpy(colours[:3]))[0].numpy()
    np.testing.assert_array_equal(composite[0, 0], colours[0])
    np.testing.assert_array_equal(composite[1, 1], colours[2])
    half = layer_composite(torch.full((1, 2, 1, 1), 0.5), torch.tensor([[0, 0, 0], [200, 100, 50]], dtype=torch.uint8))
    np.testing.assert_array_equal(half[0, 0, 0].numpy(), [100, 50, 25])
    palette = label_palette()
    assert palette.shape == (256, 3) and (palette[0] == 0).all() and len({tuple(c) for c in palette}) == 256
