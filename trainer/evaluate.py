"""What `spix eval` computes: the DESIGN.md metrics of a network beside two references.

Three feature sets describe every superpixel: the trained network's embeddings, the same
architecture untrained (seeded), and the hand-made baseline (mean colour + position). A linear
probe per set is fitted on training superpixels; then the validation split is read once and, per
set, pair AUC, clustering ARI and the probe's hard labelling are scored, plus ASA once (the ceiling
of any superpixel-level labelling). Plain functions on shard samples, no Ray and no files written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from spix.configs import build, defaults
from spix.pipeline.shards import Sample, iter_samples, read_manifest
from spix.pipeline.superpixels import paint_superpixels
from spix.trainer.embedding import embed_superpixels
from spix.trainer.metrics import (
    achievable_segmentation_accuracy,
    clustering_ari,
    image_pair_scores,
    confusion_matrix,
    pair_scores_auc,
    scores_from_confusion,
)
from spix.trainer.model import build_model, runs_bf16_at_inference
from spix.trainer.probe import LinearProbe

FeatureFn = Callable[[Sample], np.ndarray]
FEATURE_SETS = ("trained", "untrained", "baseline")


class EvaluationError(ValueError):
    """Shards that cannot be evaluated (no validation image, fewer than two training classes)."""


@dataclass(frozen=True)
class EvalSettings:
    """The [eval] section of configs/default.toml (see there), typed."""

    max_train_images: int  # 0 = every training image
    max_superpixels_per_image: int  # probe training rows drawn per image
    min_purity: float
    max_pairs_per_image: int
    seed: int


def eval_settings(**overrides: Any) -> EvalSettings:
    """The [eval] defaults of configs/default.toml with `overrides`."""
    return build(EvalSettings, {**defaults("eval"), **overrides})


# ----------------------------------------------------------------------------- feature sets


def untrained_model(preset: str, dim: int, seed: int, device: str | torch.device) -> nn.Module:
    """The trained model's architecture with seeded initial weights, in eval mode."""
    torch.manual_seed(seed)
    return build_model(preset, dim).to(device).eval()


def network_features(model: nn.Module, device: str | torch.device) -> FeatureFn:
    device = torch.device(device)
    amp = runs_bf16_at_inference(device)
    return lambda sample: embed_superpixels(model, sample.rgb, sample.superpixels, device, amp)


def colour_position_features(sample: Sample) -> np.ndarray:
    """The hand-made baseline, S x 5: mean colour (0..1) and centroid (y/H, x/W) of every superpixel, as
    `spix preprocess` stored them in the shard."""
    height, width = sample.superpixels.shape
    return np.hstack([sample.sp_mean_rgb / 255.0, sample.sp_centroid / np.array([height, width], np.float32)]).astype(np.float64)


def feature_sets(model: nn.Module, meta: dict[str, Any], device: str | torch.device, seed: int) -> dict[str, FeatureFn]:
    """trained / untrained / baseline superpixel features, in FEATURE_SETS order."""
    untrained = untrained_model(meta["preset"], int(meta["dim"]), seed, device)
    return {
        "trained": network_features(model, device),
        "untrained": network_features(untrained, device),
        "baseline": colour_position_features,
    }


# ----------------------------------------------------------------------------- linear probes


def probe_rows(sample: Sample, min_purity: float, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Ids of the superpixels a probe learns from: labelled, pure enough, at most `max_rows` drawn."""
    rows = np.flatnonzero((sample.sp_label != 0) & (sample.sp_purity >= min_purity))
    if len(rows) > max_rows:
        rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
    return rows


def fit_probes(
    samples: Iterable[Sample],
    sets: dict[str, FeatureFn],
    class_names: dict[int, str],
    settings: EvalSettings,
    on_image: Callable[[], None] = lambda: None,
) -> tuple[dict[str, LinearProbe], dict[str, int]]:
    """One LinearProbe per feature set on the same training superpixels, weighted by area.

    Returns the probes and what they saw (training_images, training_superpixels).
    """
    rng = np.random.default_rng(settings.seed)
    features: dict[str, list[np.ndarray]] = {name: [] for name in sets}
    labels, weights = [], []
    for sample in samples:
        rows = probe_rows(sample, settings.min_purity, settings.max_superpixels_per_image, rng)
        for name, describe in sets.items():
            features[name].append(describe(sample)[rows])
        labels.append(sample.sp_label[rows].astype(np.int64))
        weights.append(sample.sp_area[rows].astype(np.float64))
        on_image()
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(np.unique(y)) < 2:
        raise EvaluationError(
            f"the training superpixels (label != 0, purity >= {settings.min_purity}) carry "
            f"{len(np.unique(y))} class(es); a classifier needs at least 2"
        )
    w = np.concatenate(weights)
    probes = {
        name: LinearProbe(class_names=class_names).fit(np.concatenate(parts), y, sample_weight=w / w.mean())
        for name, parts in features.items()
    }
    return probes, {"training_images": len(labels), "training_superpixels": len(y)}


# ----------------------------------------------------------------------------- validation


@dataclass
class SetScores:
    """Running sums of one feature set over the validation images."""

    scores: list[np.ndarray] = field(default_factory=list)
    same: list[np.ndarray] = field(default_factory=list)
    ari: list[float] = field(default_factory=list)
    confusion: np.ndarray | None = None

    def add(self, scores: np.ndarray, same: np.ndarray, ari: float, confusion: np.ndarray) -> None:
        self.scores.append(scores)
        self.same.append(same)
        self.ari.append(ari)
        self.confusion = confusion if self.confusion is None else self.confusion + confusion

    def summary(self) -> dict[str, Any]:
        """pair_auc, pixel_accuracy, miou, per_class_iou, ari (nanmean over images), confusion."""
        auc = pair_scores_auc(np.concatenate(self.scores), np.concatenate(self.same))
        ari = np.asarray(self.ari, dtype=np.float64)
        scored = int(np.count_nonzero(~np.isnan(ari)))
        return {
            "pair_auc": auc,
            **scores_from_confusion(self.confusion),
            "ari": float(np.nanmean(ari)) if scored else float("nan"),
            "ari_images": scored,
        }


def evaluate_validation(
    samples: Iterable[Sample],
    sets: dict[str, FeatureFn],
    probes: dict[str, LinearProbe],
    num_classes: int,
    settings: EvalSettings,
    on_image: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Every metric of every feature set over the validation samples, read once.

    Each set gets its own pair-sampling generator with the same seed, so all sets are scored on
    the same superpixel pairs. ASA is pooled over pixels like achievable_segmentation_accuracy.
    """
    totals = {name: SetScores() for name in sets}
    rngs = {name: np.random.default_rng(settings.seed) for name in sets}
    asa_correct, labelled, images = 0.0, 0, 0
    for sample in samples:
        valid = sample.sp_purity >= settings.min_purity
        for name, describe in sets.items():
            features = describe(sample)
            scores, same = image_pair_scores(features, sample.sp_label, valid, settings.max_pairs_per_image, rngs[name])
            ari = clustering_ari(features, sample.superpixels, sample.labels, seed=settings.seed)
            painted = paint_superpixels(sample.superpixels, probes[name].predict(features))
            confusion = confusion_matrix(painted, sample.labels, num_classes)
            totals[name].add(scores, same, ari, confusion)
        pixels = int(np.count_nonzero(sample.labels))
        if pixels:
            asa_correct += achievable_segmentation_accuracy([sample.superpixels], [sample.labels]) * pixels
            labelled += pixels
        images += 1
        on_image()
    if images == 0:
        raise EvaluationError("the shards hold no validation image")
    return {
        "validation_images": images,
        "labelled_pixels": labelled,
        "asa": asa_correct / labelled if labelled else float("nan"),
        "sets": {name: total.summary() for name, total in totals.items()},
    }


# ----------------------------------------------------------------------------- whole run


def class_names_of(manifest: dict[str, Any]) -> dict[int, str]:
    """{1..K: name} from the shard manifest (generic names when it lists none or too few)."""
    num_classes = int(manifest["params"]["num_classes"])
    names = list(manifest.get("class_names") or [])
    return {c: str(names[c - 1]) if c <= len(names) else f"class{c}" for c in range(1, num_classes + 1)}


def evaluate_model(
    shards_uri: str,
    model: nn.Module,
    meta: dict[str, Any],
    device: str | torch.device,
    settings: EvalSettings,
    on_image: Callable[[str], None] = lambda split: None,
) -> tuple[dict[str, Any], dict[str, LinearProbe]]:
    """Fit the probes on training shards, score the validation split; (results, probes per set).

    The first `max_train_images` training images (0 = all) feed the probes. `on_image(split)` is
    called after each image, for progress bars. numpy's BLAS runs single-threaded here: its
    matrices are small (S x D, probe rows x D), and its spinning threads beside torch's OpenMP
    pool made the probe fit 30x slower on a busy 2-core machine (measured 1.6 s vs 0.05 s).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return evaluate_splits(shards_uri, model, meta, device, settings, on_image)


def evaluate_splits(
    shards_uri: str,
    model: nn.Module,
    meta: dict[str, Any],
    device: str | torch.device,
    settings: EvalSettings,
    on_image: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, LinearProbe]]:
    manifest = read_manifest(shards_uri)
    class_names = class_names_of(manifest)
    sets = feature_sets(model, meta, device, settings.seed)
    training = iter_samples(shards_uri, "training")
    if settings.max_train_images > 0:
        training = islice(training, settings.max_train_images)
    probes, seen = fit_probes(training, sets, class_names, settings, lambda: on_image("training"))
    results = evaluate_validation(
        iter_samples(shards_uri, "validation"), sets, probes, len(class_names), settings,
        lambda: on_image("validation"),
    )
    return {**seen, **results, "class_names": class_names}, probes
