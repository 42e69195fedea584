"""Metrics against hand-computed values and brute-force Python loops on small maps."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from helpers import brute_force_ari, brute_force_asa, brute_force_auc, brute_force_majority
from spix.pipeline.superpixels import majority_labels, paint_superpixels
from spix.trainer.probe import LinearProbe
from spix.trainer.metrics import (
    achievable_segmentation_accuracy,
    clustering_ari,
    pair_auc,
    segmentation_scores,
)


def grid_superpixels(height: int, width: int, cell: int) -> np.ndarray:
    """Square superpixels of side `cell`, ids row by row."""
    ys, xs = np.indices((height, width))
    return (ys // cell) * (width // cell) + xs // cell


# ----------------------------------------------------------------------------- pair AUC


def test_pair_auc_is_one_for_perfectly_separated_embeddings():
    rng = np.random.default_rng(0)
    labels = [rng.integers(1, 5, size=40) for _ in range(3)]
    embeddings = [10.0 * np.eye(8)[lab] + rng.normal(0, 0.1, (40, 8)) for lab in labels]
    assert pair_auc(embeddings, labels) == 1.0
    assert pair_auc(embeddings, labels, max_pairs_per_image=50, seed=3) == 1.0


def test_pair_auc_matches_brute_force_over_pairs_with_unlabelled_and_invalid_superpixels():
    rng = np.random.default_rng(1)
    embeddings, labels, valid = [], [], []
    scores, same = [], []
    for size in (7, 12, 1, 9):
        emb = rng.normal(size=(size, 3)).astype(np.float32)
        lab = rng.integers(0, 3, size=size)  # 0 = unlabelled, must be skipped
        val = rng.random(size) > 0.2
        embeddings.append(emb), labels.append(lab), valid.append(val)
        for i in range(size):
            for j in range(i + 1, size):
                if lab[i] and lab[j] and val[i] and val[j]:
                    scores.append(-float(np.sum((emb[i].astype(float) - emb[j]) ** 2)))
                    same.append(bool(lab[i] == lab[j]))
    expected = brute_force_auc(np.array(scores), np.array(same))
    assert pair_auc(embeddings, labels, valid) == pytest.approx(expected, abs=1e-12)


def test_pair_auc_of_random_embeddings_is_about_one_half():
    # One pair per image (two superpixels, random labels 1/2), so the pairs are independent and the
    # AUC is a plain Mann-Whitney statistic: under the null its SD is sqrt((n1+n2+1)/(12 n1 n2)),
    # about 0.009 for n1 ~ n2 ~ 2000. The tolerance 0.04 is over 4 SD.
    rng = np.random.default_rng(2)
    labels = [rng.integers(1, 3, size=2) for _ in range(4000)]
    embeddings = [rng.normal(size=(2, 16)) for _ in labels]
    n1 = sum(int(lab[0] == lab[1]) for lab in labels)
    n2 = len(labels) - n1
    assert math.sqrt((n1 + n2 + 1) / (12 * n1 * n2)) < 0.01
    assert pair_auc(embeddings, labels) == pytest.approx(0.5, abs=0.04)


def test_pair_auc_subsampling_draws_pairs_at_random_not_in_order():
    # 1-D embeddings x_i = i, labels 1 for the first half and 2 for the second: the first 2,000
    # pairs of np.triu_indices (i < ~10) give AUC ~1, the 19,900 pairs together ~0.92. A uniform
    # sample of 2,000 pairs has an AUC SD below 0.01 (measured spread over seeds +-0.008), so it
    # must land within 0.03 of the full value and far from the in-order one.
    n = 200
    lab = np.where(np.arange(n) < n // 2, 1, 2)
    emb = np.arange(n, dtype=float)[:, None]
    i, j = np.triu_indices(n, k=1)
    in_order = brute_force_auc(-((i[:2000] - j[:2000]) ** 2.0), lab[i[:2000]] == lab[j[:2000]])
    full = pair_auc([emb], [lab])
    assert in_order - full > 0.06
    sampled = pair_auc([emb], [lab], max_pairs_per_image=2000, seed=0)
    assert sampled == pytest.approx(full, abs=0.03)
    assert sampled == pair_auc([emb], [lab], max_pairs_per_image=2000, seed=0)
    assert pair_auc([emb], [lab], max_pairs_per_image=10**6) == full


def test_pair_auc_subsampling_draws_each_pair_at_most_once():
    """max_pairs_per_image draws pairs without replacement: asking for all pairs but one scores every pair but
    one exactly once, so the AUC is one of the leave-one-pair-out AUCs (brute force over the 66 of them).
    Embeddings 2^i make every pair's distance distinct, so a pair drawn twice would weigh double."""
    n = 12
    lab = np.where(np.arange(n) % 3 == 0, 1, 2)
    emb = (2.0 ** np.arange(n))[:, None]
    i, j = np.triu_indices(n, k=1)
    scores, same = -((emb[i, 0] - emb[j, 0]) ** 2), lab[i] == lab[j]
    leave_one_out = [brute_force_auc(np.delete(scores, k), np.delete(same, k)) for k in range(len(i))]
    for seed in range(3):
        sampled = pair_auc([emb], [lab], max_pairs_per_image=len(i) - 1, seed=seed)
        assert min(abs(sampled - value) for value in leave_one_out) < 1e-12


def test_pair_auc_is_nan_without_positive_or_negative_pairs():
    emb = [np.zeros((3, 2))]
    assert math.isnan(pair_auc(emb, [np.array([1, 2, 3])]))  # only negatives
    assert math.isnan(pair_auc(emb, [np.array([4, 4, 0])]))  # only one positive pair
    assert math.isnan(pair_auc([], []))


# ----------------------------------------------------------------------------- majority and ASA


@pytest.mark.parametrize("ignore", [None, 0])
def test_majority_labels_with_an_ignored_label_match_brute_force(ignore):
    rng = np.random.default_rng(5)
    for _ in range(20):
        sp = rng.integers(0, 8, size=(9, 11))
        lab = rng.integers(0, 4, size=(9, 11))
        majority, purity, _ = majority_labels(sp, lab, num_labels=4, ignore_label=ignore)
        expected_majority, expected_purity = brute_force_majority(sp, lab, ignore)
        assert majority.tolist() == expected_majority
        np.testing.assert_allclose(purity, expected_purity)


def test_majority_labels_hand_case_tie_goes_to_smallest_label():
    sp = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    lab = np.array([[3, 2, 0, 0], [2, 3, 0, 5]])
    majority, purity, voters = majority_labels(sp, lab, num_labels=6, ignore_label=0)
    assert majority.tolist() == [2, 5]
    assert purity.tolist() == [0.5, 1.0]
    assert voters.tolist() == [4, 1]
    majority, purity, voters = majority_labels(sp, lab, num_labels=6)  # 0 votes too
    assert majority.tolist() == [2, 0]
    assert purity.tolist() == [0.5, 0.75]
    with pytest.raises(ValueError):
        majority_labels(sp, lab, num_labels=5)


@pytest.mark.parametrize("ignore", [None, 0])
def test_asa_matches_brute_force_on_random_maps(ignore):
    rng = np.random.default_rng(6)
    superpixels = [rng.integers(0, 6, size=(8, 10)) for _ in range(5)]
    labels = [rng.integers(0, 5, size=(8, 10)) for _ in range(5)]
    assert achievable_segmentation_accuracy(superpixels, labels, ignore) == pytest.approx(
        brute_force_asa(superpixels, labels, ignore)
    )


def test_asa_hand_case_and_edge_cases():
    sp = np.array([[0, 0, 1], [0, 1, 1]])
    lab = np.array([[1, 2, 2], [0, 2, 3]])
    # sp 0: labels {1, 2} (0 ignored) -> 1 right; sp 1: {2, 2, 3} -> 2 right; 5 labelled pixels.
    assert achievable_segmentation_accuracy([sp], [lab]) == pytest.approx(3 / 5)
    assert achievable_segmentation_accuracy([sp], [lab], ignore_label=None) == pytest.approx(3 / 6)
    assert achievable_segmentation_accuracy([sp], [lab]) == achievable_segmentation_accuracy([sp, sp], [lab, lab])
    assert achievable_segmentation_accuracy([lab], [lab]) == 1.0  # superpixels = GT regions
    assert math.isnan(achievable_segmentation_accuracy([sp], [np.zeros_like(lab)]))


def test_paint_superpixels_indexes_values_by_id():
    sp = np.array([[2, 0], [1, 2]])
    assert paint_superpixels(sp, np.array([7, 8, 9])).tolist() == [[9, 7], [8, 9]]
    with pytest.raises(ValueError):
        paint_superpixels(sp, np.array([7, 8]))


# ----------------------------------------------------------------------------- segmentation scores


def test_segmentation_scores_hand_computed_confusion():
    gt = np.array([[1, 1, 2], [2, 0, 3]])
    pred = np.array([[1, 2, 2], [4, 4, 3]])
    # Labelled pixels (gt != 0): 5; the pred 4 under gt 0 is not counted.
    # gt1: ->1, ->2; gt2: ->2, ->4; gt3: ->3.  Accuracy 3/5.
    # IoU1 = 1/(2+1-1) = 1/2, IoU2 = 1/(2+2-1) = 1/3, IoU3 = 1/(1+1-1) = 1; class 4 is not in the GT.
    scores = segmentation_scores([pred], [gt], num_classes=4)
    expected = np.zeros((5, 5), dtype=int)
    expected[1, 1] = expected[1, 2] = expected[2, 2] = expected[2, 4] = expected[3, 3] = 1
    np.testing.assert_array_equal(scores["confusion"], expected)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    assert scores["per_class_iou"] == pytest.approx({1: 1 / 2, 2: 1 / 3, 3: 1.0})
    assert scores["miou"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)


def test_segmentation_scores_match_brute_force_per_class_loop():
    rng = np.random.default_rng(7)
    k = 5
    gt = [rng.integers(0, k, size=(6, 7)) for _ in range(4)]  # class 5 never in the GT
    pred = [rng.integers(0, k + 1, size=(6, 7)) for _ in range(4)]
    scores = segmentation_scores(pred, gt, num_classes=k)
    g, p = np.concatenate([a.ravel() for a in gt]), np.concatenate([a.ravel() for a in pred])
    labelled = [(gv, pv) for gv, pv in zip(g.tolist(), p.tolist()) if gv != 0]
    expected_iou = {}
    for c in sorted({gv for gv, _ in labelled}):
        inter = sum(1 for gv, pv in labelled if gv == c and pv == c)
        union = sum(1 for gv, pv in labelled if gv == c or pv == c)
        expected_iou[c] = inter / union
    assert 5 not in scores["per_class_iou"]
    assert scores["per_class_iou"] == pytest.approx(expected_iou)
    assert scores["miou"] == pytest.approx(sum(expected_iou.values()) / len(expected_iou))
    assert scores["pixel_accuracy"] == pytest.approx(sum(gv == pv for gv, pv in labelled) / len(labelled))
    assert scores["confusion"].sum() == len(labelled)


def test_segmentation_scores_reject_out_of_range_labels_and_handle_empty():
    with pytest.raises(ValueError):
        segmentation_scores([np.array([[6]])], [np.array([[1]])], num_classes=5)
    empty = segmentation_scores([np.array([[3]])], [np.array([[0]])], num_classes=5)
    assert math.isnan(empty["pixel_accuracy"]) and math.isnan(empty["miou"]) and empty["per_class_iou"] == {}


# ----------------------------------------------------------------------------- clustering ARI


def striped_gt(sp: np.ndarray, rng: np.random.Generator, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A GT that follows superpixel boundaries: one random class per superpixel."""
    sp_class = rng.integers(1, num_classes + 1, size=int(sp.max()) + 1)
    return sp_class, sp_class[sp]


def test_clustering_ari_is_one_for_separated_embeddings_and_ignores_unlabelled_pixels():
    rng = np.random.default_rng(8)
    sp = grid_superpixels(32, 32, 4)  # 64 superpixels
    sp_class, gt = striped_gt(sp, rng, 4)
    embeddings = 10.0 * np.eye(5)[sp_class] + rng.normal(0, 0.1, (64, 5))
    gt[:3, :] = 0  # unlabelled pixels cut through superpixels: they must not count
    assert clustering_ari(embeddings, sp, gt) == pytest.approx(1.0)


@pytest.mark.slow
def test_clustering_ari_of_random_embeddings_is_about_zero():
    # For independent partitions of n items into k groups, ARI ~ (chi2 - (k-1)^2) / (n (k-1)), so
    # its SD is about sqrt(2) / n. At pixel level the m pixels of a superpixel always agree, which
    # adds a small positive bias of about k / n * (1 - 1/m). With n = 1024 superpixels, k = 4 and
    # m = 4 both are below 0.005 (measured: mean 0.002-0.003 over seeds), so 0.02 is a safe
    # tolerance; a clustering that saw the labels would score near 1.
    rng = np.random.default_rng(9)
    sp = grid_superpixels(64, 64, 2)
    scores = []
    for seed in range(10):
        _, gt = striped_gt(sp, rng, 4)
        scores.append(clustering_ari(rng.normal(size=(1024, 8)), sp, gt, seed=seed, n_init=1))
    assert np.mean(scores) == pytest.approx(0.0, abs=0.02)


def test_clustering_ari_of_a_known_imperfect_clustering_matches_pair_counting():
    """Embeddings in two tight, far-apart groups that cut across the GT classes: k-means (k = 2 classes
    present) must find exactly those groups, so the score is the ARI of that known clustering against the
    GT over the labelled pixels, counted pair by pair; a row of unlabelled pixels crosses superpixels."""
    sp = grid_superpixels(16, 16, 4)  # 16 superpixels of 4x4, ids row by row
    sp_class = np.array([1] * 6 + [2] * 10)
    gt = sp_class[sp]
    gt[5, :] = 0
    group = np.array([0] * 8 + [1] * 8)  # superpixels 0-7 in one group: it takes class 1 and part of class 2
    embeddings = 100.0 * group[:, None] + np.random.default_rng(3).normal(0, 0.01, (16, 2))
    labelled = gt != 0
    expected = brute_force_ari(gt[labelled].tolist(), group[sp][labelled].tolist())
    assert 0.1 < expected < 0.9  # neither agreement nor chance: a wrong pixel count or k shows
    assert clustering_ari(embeddings, sp, gt) == pytest.approx(expected, abs=1e-12)


def test_clustering_ari_is_nan_with_one_class():
    sp = grid_superpixels(8, 8, 4)
    gt = np.where(np.arange(8)[None, :] < 4, 3, 0) * np.ones((8, 1), dtype=int)
    assert math.isnan(clustering_ari(np.random.default_rng(0).normal(size=(4, 3)), sp, gt))


# ----------------------------------------------------------------------------- linear probe


def blobs(rng: np.random.Generator, classes: list[int], n: int = 60, dims: int = 6) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(classes, n)
    centres = rng.normal(0, 3, size=(max(classes) + 1, dims))
    scales = np.array([1.0, 10.0, 0.1, 1.0, 100.0, 1.0])[:dims]  # unequal scales: the scaler matters
    return (centres[y] + rng.normal(size=(len(y), dims))) * scales + 5.0, y


@pytest.mark.parametrize("classes", [[2, 5, 7], [1, 4]])
def test_linear_probe_predicts_like_sklearn_and_survives_save_load_without_pickle(classes, tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    X, y = blobs(rng, classes)
    probe = LinearProbe(max_iter=500, class_names={c: f"class{c}" for c in classes}).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    X_test, _ = blobs(np.random.default_rng(11), classes)
    expected = reference.predict(scaler.transform(X_test))
    np.testing.assert_array_equal(probe.predict(X_test), expected)
    assert np.mean(probe.predict(X) == y) > 0.9

    path = tmp_path / "probe.npz"
    probe.save(path)
    with np.load(path, allow_pickle=False) as arrays:  # plain numeric arrays only
        assert set(arrays.files) == {"coef", "intercept", "classes", "mean", "scale"}
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load used"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads used"))
    loaded = LinearProbe.load(path)
    np.testing.assert_array_equal(loaded.predict(X_test), expected)
    assert loaded.class_names == {c: f"class{c}" for c in classes}
    assert loaded.to_dict() == probe.to_dict()


def test_linear_probe_zero_weights_equal_dropping_samples():
    rng = np.random.default_rng(12)
    X, y = blobs(rng, [1, 2, 3])
    X_noise, _ = blobs(np.random.default_rng(13), [1, 2, 3])
    y_noise = np.random.default_rng(14).permutation(y)  # wrong labels, only harmless at weight 0
    weights = np.r_[np.ones(len(y)), np.zeros(len(y))]
    weighted = LinearProbe().fit(np.vstack([X, X_noise]), np.r_[y, y_noise], sample_weight=weights)
    plain = LinearProbe().fit(X, y)
    np.testing.assert_allclose(weighted.mean_, plain.mean_)
    np.testing.assert_allclose(weighted.coef_, plain.coef_, atol=1e-3)
    np.testing.assert_array_equal(weighted.predict(X_noise), plain.predict(X_noise))


def test_linear_probe_load_rejects_broken_files(tmp_path):
    rng = np.random.default_rng(15)
    X, y = blobs(rng, [1, 2, 3])
    path = tmp_path / "probe.npz"
    LinearProbe().fit(X, y).save(path)
    with np.load(path) as arrays:
        parts = dict(arrays)
    np.savez(path, **{**parts, "intercept": parts["intercept"][:2]})
    with pytest.raises(ValueError):
        LinearProbe.load(path)
    np.savez(path, **{**parts, "classes": np.array([{"a": 1}] * 3, dtype=object)})  # needs pickle
    with pytest.raises(ValueError):
        LinearProbe.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        LinearProbe.load(path)
