"""Evaluation metrics of DESIGN.md ("Metrics"): pair AUC, ASA, hard labelling, clustering ARI.

Plain numpy / scikit-learn functions on decoded arrays, so `spix eval` only has to read shards and
run the model; everything here can be tested on hand-made maps. Label maps follow ADE20K:
0 is "unlabelled" and 1..K are classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from spix.pipeline.superpixels import majority_labels, paint_superpixels

# ----------------------------------------------------------------------------- pair AUC


def squared_distances(embeddings: np.ndarray) -> np.ndarray:
    """All S x S squared euclidean distances, through the Gram matrix (float64, clipped at 0)."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.einsum("sd,sd->s", e, e)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * (e @ e.T), 0.0)


def image_pair_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray | None,
    max_pairs: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores -d_ij and same-label flags of the pairs i<j of one image's valid superpixels."""
    labels = np.asarray(labels)
    keep = labels != 0
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    emb, lab = np.asarray(embeddings)[keep], labels[keep]
    i, j = np.triu_indices(len(lab), k=1)
    if max_pairs is not None and len(i) > max_pairs:
        chosen = rng.choice(len(i), size=max_pairs, replace=False)
        i, j = i[chosen], j[chosen]
    return -squared_distances(emb)[i, j], lab[i] == lab[j]


def pair_auc(
    embeddings: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    max_pairs_per_image: int | None = None,
    seed: int = 0,
) -> float:
    """ROC-AUC of -d_ij (squared euclidean, not clipped) for same- vs different-label pairs.

    Pairs are i<j within one image, over superpixels with label != 0 (and `valid`, e.g. purity
    above a threshold). `max_pairs_per_image` draws that many pairs per image uniformly without
    replacement (seeded) to bound the cost. nan when there is no positive or no negative pair.
    """
    if len(embeddings) != len(labels) or (valid is not None and len(valid) != len(labels)):
        raise ValueError("embeddings, labels and valid must hold one entry per image")
    rng = np.random.default_rng(seed)
    scores, same = [], []
    for emb, lab, val in zip(embeddings, labels, [None] * len(labels) if valid is None else valid):
        s, p = image_pair_scores(emb, lab, val, max_pairs_per_image, rng)
        scores.append(s)
        same.append(p)
    all_same = np.concatenate(same) if same else np.zeros(0, dtype=bool)
    return pair_scores_auc(np.concatenate(scores) if scores else np.zeros(0), all_same)


def pair_scores_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """ROC-AUC of pair scores against same-label flags; nan when one kind of pair is missing."""
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, scores))


# ----------------------------------------------------------------------------- superpixel labels


def check_label_maps(superpixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as int64 arrays of one shape, superpixel ids non-negative (else ValueError)."""
    sp, lab = np.asarray(superpixels), np.asarray(labels)
    if sp.shape != lab.shape:
        raise ValueError(f"superpixel map {sp.shape} and label map {lab.shape} differ in shape")
    if sp.size and sp.min() < 0:
        raise ValueError("superpixel ids must be non-negative")
    return sp.astype(np.int64), lab.astype(np.int64)


def achievable_segmentation_accuracy(
    superpixels: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    ignore_label: int | None = 0,
) -> float:
    """ASA: pixel accuracy over all images of labelling every superpixel with its majority label.

    The ceiling of any superpixel-level labelling. Pixels whose GT is `ignore_label` neither vote
    nor count; with `ignore_label=None` every pixel does. nan when no pixel counts.
    """
    correct = total = 0
    for sp, lab in zip(superpixels, labels, strict=True):
        lab = np.asarray(lab)
        num_labels = int(lab.max()) + 1 if lab.size else 1
        majority, _, _ = majority_labels(np.asarray(sp), lab, num_labels, ignore_label)
        counted = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
        correct += int(np.count_nonzero((paint_superpixels(sp, majority) == lab) & counted))
        total += int(np.count_nonzero(counted))
    return correct / total if total else float("nan")


# ----------------------------------------------------------------------------- hard labelling


def segmentation_scores(
    pred: Sequence[np.ndarray],
    gt: Sequence[np.ndarray],
    num_classes: int,
    ignore_label: int = 0,
) -> dict:
    """Pixel accuracy and IoU from one confusion matrix accumulated over all images.

    Labels lie in [0, num_classes]; pixels whose GT is `ignore_label` are left out (a prediction
    of the ignore label elsewhere is simply wrong). `confusion[g, p]` counts GT g predicted as p.
    mIoU is the mean over the classes present in the GT (ignore label excluded), so a class that
    is only ever predicted lowers others' IoU but is not averaged in itself.
    """
    size = num_classes + 1
    confusion = np.zeros((size, size), dtype=np.int64)
    for p, g in zip(pred, gt, strict=True):
        confusion += confusion_matrix(p, g, num_classes, ignore_label)
    return scores_from_confusion(confusion, ignore_label)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int = 0) -> np.ndarray:
    """(K+1) x (K+1) counts of GT g predicted as p for one image, pixels with GT = ignore_label left out.

    Summing these over images and then calling scores_from_confusion streams any number of images.
    """
    p, g = np.asarray(pred, dtype=np.int64), np.asarray(gt, dtype=np.int64)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    keep = g != ignore_label
    p, g = p[keep], g[keep]
    if p.size and (min(p.min(), g.min()) < 0 or max(p.max(), g.max()) > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}]")
    size = num_classes + 1
    return np.bincount(g * size + p, minlength=size * size).reshape(size, size)


def scores_from_confusion(confusion: np.ndarray, ignore_label: int = 0) -> dict:
    """Pixel accuracy, mIoU over the classes present in the GT, per-class IoU, and the matrix itself."""
    tp = np.diag(confusion)
    gt_count, pred_count = confusion.sum(axis=1), confusion.sum(axis=0)
    present = [c for c in range(len(confusion)) if c != ignore_label and gt_count[c] > 0]
    per_class = {c: float(tp[c] / (gt_count[c] + pred_count[c] - tp[c])) for c in present}
    total = confusion.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "miou": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "per_class_iou": per_class,
        "confusion": confusion,
    }


# ----------------------------------------------------------------------------- clustering


def clustering_ari(
    embeddings: np.ndarray,
    superpixels: np.ndarray,
    gt: np.ndarray,
    seed: int = 0,
    ignore_label: int = 0,
    n_init: int = 4,
) -> float:
    """Pixel-level adjusted Rand index of k-means on one image's superpixel embeddings vs the GT.

    k is the number of GT classes present (ignore label excluded), capped at the number of
    labelled superpixels. k-means is fitted on the superpixels with labelled pixels, so an
    unlabelled region cannot take one of the k clusters, and then assigns every superpixel; the
    score counts labelled pixels only. nan when k <= 1: with a single class every clustering
    scores the same, so the image says nothing. Average over images with np.nanmean.
    """
    sp, lab = check_label_maps(superpixels, gt)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    counted = lab != ignore_label
    majority, _, _ = majority_labels(sp, lab, int(lab.max()) + 1, ignore_label)
    labelled = np.zeros(len(embeddings), dtype=bool)
    labelled[: len(majority)] = majority != ignore_label
    k = min(len(np.unique(lab[counted])), int(labelled.sum()))
    if k <= 1:
        return float("nan")
    kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(embeddings[labelled])
    clusters = kmeans.predict(embeddings)
    return float(adjusted_rand_score(lab[counted], paint_superpixels(sp, clusters)[counted]))
