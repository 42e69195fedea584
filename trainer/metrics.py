"""Evaluation metrics of DESIGN.md ("Metrics"): pair AUC, ASA, hard labelling, clustering ARI.

Plain numpy / scikit-learn functions on decoded arrays, so `spix eval` only has to read shards and
run the model; everything here can be tested on hand-made maps. Label maps follow ADE20K:
0 is "unlabelled" and 1..K are classes.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

PROBE_FORMAT = "spix-linear-probe-v1"


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


def superpixel_majority(
    superpixels: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    ignore_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label and purity of every superpixel 0..max(superpixels), by one bincount.

    `num_labels` is the number of label values: labels must lie in [0, num_labels). Pixels with
    `ignore_label` (when given) are not counted, so a superpixel's majority is its most common
    real label; one with no counted pixel gets `ignore_label` and purity 0. Purity is the share of
    the counted pixels that carry the majority. Ties go to the smallest label (np.argmax).
    """
    sp, lab = check_label_maps(superpixels, labels)
    if lab.size and (lab.min() < 0 or lab.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels})")
    num_sp = int(sp.max()) + 1 if sp.size else 0
    votes = None if ignore_label is None else (lab != ignore_label).ravel().astype(np.float64)
    counts = np.bincount(sp.ravel() * num_labels + lab.ravel(), weights=votes, minlength=num_sp * num_labels)
    counts = counts.reshape(num_sp, num_labels)
    majority = counts.argmax(axis=1)
    counted = counts.sum(axis=1)
    purity = np.divide(counts.max(axis=1, initial=0), counted, out=np.zeros(num_sp), where=counted > 0)
    if ignore_label is not None:
        majority[counted == 0] = ignore_label
    return majority, purity


def paint_superpixels(superpixels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-pixel map of a per-superpixel value (values[superpixels])."""
    values = np.asarray(values)
    sp = np.asarray(superpixels)
    if sp.size and sp.max() >= len(values):
        raise ValueError(f"superpixel id {int(sp.max())} has no value ({len(values)} given)")
    return values[sp]


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
        majority, _ = superpixel_majority(sp, lab, num_labels, ignore_label)
        counted = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
        correct += int(np.count_nonzero((paint_superpixels(sp, majority) == lab) & counted))
        total += int(np.count_nonzero(counted))
    return correct / total if total else float("nan")


# ----------------------------------------------------------------------------- hard labelling


class LinearProbe:
    """Multinomial logistic regression on standardised features, saved without pickle.

    After `fit` the probe is nothing but arrays (scaler mean/scale, coef, intercept, classes), and
    `predict` is argmax(standardised X @ coef.T + intercept) on them, so a probe loaded from its
    .npz + .json predicts exactly like the fitted one and loading never runs pickle.
    """

    def __init__(self, max_iter: int = 1000, C: float = 1.0, class_names: Mapping[int, str] | None = None):
        self.max_iter = max_iter
        self.C = C
        self.class_names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.classes_: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> LinearProbe:
        """Fit scaler and classifier (both weighted by `sample_weight`); needs >= 2 classes in y."""
        scaler = StandardScaler().fit(X, sample_weight=sample_weight)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(scaler.transform(X), y, sample_weight=sample_weight)
        self.mean_, self.scale_ = scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)
        self.coef_, self.intercept_ = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
        self.classes_ = np.asarray(model.classes_.tolist())  # numbers or str, never object dtype
        return self

    def decision_scores(self, X: np.ndarray) -> np.ndarray:
        """N x classes scores; a binary model's single column w.x+b becomes [0, w.x+b]."""
        if self.coef_ is None:
            raise RuntimeError("LinearProbe is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[1]:
            raise ValueError(f"expected features of shape (N, {self.coef_.shape[1]}), got {X.shape}")
        scores = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        if scores.shape[1] == 1:
            scores = np.hstack([np.zeros_like(scores), scores])
        return scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_scores(X).argmax(axis=1)]

    def to_dict(self) -> dict:
        """JSON-serialisable description (parameters, classes, names); the arrays go to the .npz."""
        return {
            "format": PROBE_FORMAT,
            "max_iter": self.max_iter,
            "C": self.C,
            "classes": None if self.classes_ is None else self.classes_.tolist(),
            "class_names": {str(k): v for k, v in self.class_names.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write `path` (.npz of numeric arrays) and its sidecar `path` with suffix .json."""
        if self.coef_ is None:
            raise RuntimeError("LinearProbe is not fitted")
        path = Path(path)
        if path.suffix == ".json":
            raise ValueError(f"{path}: the arrays file would overwrite its own .json sidecar")
        with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
            np.savez(f, coef=self.coef_, intercept=self.intercept_, classes=self.classes_,
                     mean=self.mean_, scale=self.scale_)
        path.with_suffix(".json").write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        """Read a probe written by `save`, with np.load(allow_pickle=False); ValueError if broken."""
        path = Path(path)
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta.get("format") != PROBE_FORMAT:
                raise ValueError(f"not a {PROBE_FORMAT} sidecar")
            probe = cls(max_iter=int(meta["max_iter"]), C=float(meta["C"]),
                        class_names={int(k): v for k, v in meta["class_names"].items()})
            with np.load(path, allow_pickle=False) as arrays:
                coef, intercept, classes, mean, scale = (
                    arrays[name] for name in ("coef", "intercept", "classes", "mean", "scale")
                )
        except (OSError, KeyError, TypeError, AttributeError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a readable linear probe: {error}") from error
        check_probe_arrays(coef, intercept, classes, mean, scale)
        probe.coef_, probe.intercept_, probe.classes_ = coef.astype(np.float64), intercept.astype(np.float64), classes
        probe.mean_, probe.scale_ = mean.astype(np.float64), scale.astype(np.float64)
        return probe


def check_probe_arrays(
    coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> None:
    """Raise ValueError unless the loaded arrays fit together as one linear probe."""
    if classes.ndim != 1 or len(classes) < 2 or coef.ndim != 2:
        raise ValueError("linear probe arrays are inconsistent (classes or coef shape)")
    rows = 1 if len(classes) == 2 else len(classes)  # sklearn keeps one row for a binary model
    dims = coef.shape[1]
    if (
        coef.shape[0] != rows or intercept.shape != (rows,) or mean.shape != (dims,) or scale.shape != (dims,)
        or not all(np.issubdtype(a.dtype, np.number) for a in (coef, intercept, mean, scale))
        or not (np.all(np.isfinite(coef)) and np.all(np.isfinite(mean)) and np.all(scale > 0))
    ):
        raise ValueError("linear probe arrays are inconsistent (shapes, dtypes or non-finite values)")


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
    majority, _ = superpixel_majority(sp, lab, int(lab.max()) + 1, ignore_label=ignore_label)
    labelled = np.zeros(len(embeddings), dtype=bool)
    labelled[: len(majority)] = majority != ignore_label
    k = min(len(np.unique(lab[counted])), int(labelled.sum()))
    if k <= 1:
        return float("nan")
    kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(embeddings[labelled])
    clusters = kmeans.predict(embeddings)
    return float(adjusted_rand_score(lab[counted], paint_superpixels(sp, clusters)[counted]))


# ----------------------------------------------------------------------------- baseline features


def baseline_features(rgb: np.ndarray, superpixels: np.ndarray, num_superpixels: int) -> np.ndarray:
    """The hand-made baseline: per superpixel mean colour (0..1) and centroid (y/H, x/W).

    S x 5 float64, columns r, g, b, y, x. A superpixel id without pixels gets zeros.
    """
    rgb = np.asarray(rgb)
    sp = np.asarray(superpixels, dtype=np.int64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != sp.shape:
        raise ValueError(f"expected an H x W x 3 image matching the {sp.shape} superpixel map, got {rgb.shape}")
    if sp.size and (sp.min() < 0 or sp.max() >= num_superpixels):
        raise ValueError(f"superpixel ids must lie in [0, {num_superpixels})")
    height, width = sp.shape
    ys, xs = np.indices(sp.shape)
    columns = [rgb[..., c] / 255.0 for c in range(3)] + [ys / height, xs / width]
    flat = sp.ravel()
    area = np.bincount(flat, minlength=num_superpixels)
    sums = np.stack([np.bincount(flat, weights=col.ravel(), minlength=num_superpixels) for col in columns], axis=1)
    return sums / np.maximum(area, 1)[:, None]
