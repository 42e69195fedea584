"""The linear probe of `spix eval`: a classifier of superpixel embeddings, saved as plain arrays.

`spix eval` fits it on the training split and saves it in RUN/eval/; `spix infer --labels` loads it to
paint label maps. Its own module because it is a saved model with a file format of its own.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from spix.pipeline.files import write_atomic, write_text_atomic

PROBE_FORMAT = "spix-linear-probe-v1"
CLASSIFIER_FILE = "classifier.npz"  # + classifier.json beside it; written by `spix eval`, read by `spix infer --labels`


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
        arrays = dict(coef=self.coef_, intercept=self.intercept_, classes=self.classes_, mean=self.mean_, scale=self.scale_)
        write_atomic(path, lambda handle: np.savez(handle, **arrays))  # a file object keeps np.savez from appending ".npz"
        write_text_atomic(path.with_suffix(".json"), json.dumps(self.to_dict(), indent=2))

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


def find_classifier(run_dir: Path) -> Path:
    """The newest classifier.npz that `spix eval` wrote inside a run folder (its reports go to RUN/eval/)."""
    found = sorted(Path(run_dir).rglob(CLASSIFIER_FILE), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {CLASSIFIER_FILE} under {run_dir}; run `spix eval` or pass --classifier")
    return found[-1]
