"""Helpers shared by the test modules: running the CLI, writing small datasets, and the independent
(brute-force) computations that the library's vectorised code is checked against.

The brute-force functions are deliberately written as plain loops over pixels, superpixels or pairs,
straight from the definitions in DESIGN.md, and share no code with the library.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import tomllib
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
SPIX = [sys.executable, "-m", "spix"]
CALIBRATED = Path(__file__).with_name("calibrated.toml")  # the training recipe the learning tests' margins were measured with


def calibrated_recipe() -> dict[str, Any]:
    """calibrated.toml's [train] settings, as overrides of train_config: the in-process learning tests
    train with the same recipe as the CLI runs that pass `--config calibrated.toml`."""
    return tomllib.loads(CALIBRATED.read_text())["train"]


def run_spix(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (its own Ray instance), capturing text output."""
    return subprocess.run(
        [*SPIX, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kwargs
    )


def cli(*args: str) -> Any:
    """Run the CLI in this process (typer's CliRunner): for errors a command reports before it starts Ray,
    without the seconds a fresh interpreter spends importing torch. Returns a click Result (exit_code, stderr)."""
    from typer.testing import CliRunner

    from spix.cli.main import app

    return CliRunner().invoke(app, list(args))


# ----------------------------------------------------------------------------- small datasets


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save(image: Image.Image, path: Path, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def write_class_names(root: Path, num_classes: int) -> None:
    (root / "objectInfo150.csv").write_text(
        "Idx,Ratio,Train,Val,Name\n" + "".join(f"{i},0.1,1,1,c{i}\n" for i in range(1, num_classes + 1))
    )


def tiny_image(name: str, height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A small RGB image of 4x4 colour blocks and its 3-class label map, both determined by `name` alone,
    so that an image removed and added again is the same image."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    blocks = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    rgb = np.kron(blocks, np.ones((4, 4, 1), np.uint8))[:height, :width]
    label_blocks = rng.integers(0, 4, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    labels = np.kron(label_blocks, np.ones((8, 8), np.uint8))[:height, :width]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(labels)


def write_tiny_image(root: Path, split: str, name: str) -> None:
    """images/<split>/<name>.png and annotations/<split>/<name>.png of `tiny_image(name)`."""
    rgb, labels = tiny_image(name)
    save(Image.fromarray(rgb), root / "images" / split / f"{name}.png")
    save(Image.fromarray(labels), root / "annotations" / split / f"{name}.png")


def remove_tiny_image(root: Path, split: str, name: str) -> None:
    (root / "images" / split / f"{name}.png").unlink()
    (root / "annotations" / split / f"{name}.png").unlink()


def write_tiny_dataset(root: Path, splits: dict[str, list[str]], num_classes: int = 3) -> None:
    """An ADE-layout data root holding `tiny_image(name)` for every name of every split."""
    for split, names in splits.items():
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_tiny_image(root, split, name)
    write_class_names(root, num_classes)


def write_untidy_dataset(root: Path) -> tuple[set[str], dict[str, str]]:
    """Valid-but-unusual images (expected processed) and broken ones (expected skipped, with a reason word)."""
    rng = np.random.default_rng(1)
    images, annotations = root / "images" / "training", root / "annotations" / "training"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rgb = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (60, 80), dtype=np.uint8)
    good = {
        "gray.jpg": Image.fromarray(rgb[:, :, 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "sixteen.png": Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)),
        "UPPER.JPG": Image.fromarray(rgb),
        "with space é.jpg": Image.fromarray(rgb),
        "tiny.jpg": Image.fromarray(rgb[:3, :4]),
    }
    for name, image in good.items():
        save(image, images / name)
        label = labels[:3, :4] if name == "tiny.jpg" else labels
        save(Image.fromarray(label), annotations / (Path(name).stem + ".png"))
    save(Image.fromarray(rgb), images / "overflow.jpg")
    save(Image.fromarray(np.where(labels == 3, 200, labels).astype(np.uint8)), annotations / "overflow.png")
    full = io.BytesIO()
    Image.fromarray(rgb).save(full, format="JPEG")
    broken = {
        "truncated.jpg": full.getvalue()[: len(full.getvalue()) // 2],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image at all\n" * 10,
    }
    for name, data in broken.items():
        (images / name).write_bytes(data)
        save(Image.fromarray(labels), annotations / (Path(name).stem + ".png"))
    save(Image.fromarray(rgb), images / "no_annotation.jpg")
    save(Image.fromarray(rgb), images / "mismatch.jpg")
    save(Image.fromarray(labels[:30]), annotations / "mismatch.png")
    write_class_names(root, 3)
    reasons = {"truncated.jpg": "decode", "zero.jpg": "empty", "text.jpg": "not an image",
               "no_annotation.jpg": "missing annotation", "mismatch.jpg": "annotation is 80x30"}
    return set(good) | {"overflow.jpg"}, reasons


# ----------------------------------------------------------------------------- preprocessing without Ray


def run_preprocess_serially(monkeypatch: Any, data_root: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
    """`run_preprocess` (planning, resume, manifest: the bookkeeping under test) with its shard tasks run
    one after the other in this process by the plain `build_shard`, instead of on Ray: the bookkeeping
    does not depend on Ray, and a Ray start costs ~10 s on a 2-core machine."""
    from spix.pipeline import cluster, preprocess

    def run_shards_serially(
        plans: list[preprocess.ShardPlan], data_root_str: str, out_uri: str, params: preprocess.PreprocessParams,
        on_progress: Any,
    ) -> list[preprocess.ShardResult]:
        """run_shards_on_ray's contract, one plain build_shard call after the other."""
        results = []
        for plan in plans:
            results.append(preprocess.build_shard(plan, data_root_str, out_uri, params))
            on_progress(len(plan.records))
        return results

    monkeypatch.setattr(preprocess, "run_shards_on_ray", run_shards_serially)
    monkeypatch.setattr(preprocess, "warm_up_workers", lambda: None)
    monkeypatch.setattr(cluster, "init_ray", lambda *args, **kwargs: None)
    defaults: dict[str, Any] = dict(splits=("training", "validation"), images_per_shard=4)
    settings = {**defaults, **kwargs}
    params = settings.pop("params", preprocess.preprocess_params(num_superpixels=12))
    return preprocess.run_preprocess(data_root, str(out), settings.pop("splits"), params, settings.pop("images_per_shard"), **settings)


# ----------------------------------------------------------------------------- brute-force statistics


def brute_force_stats(superpixels: np.ndarray, labels: np.ndarray, rgb: np.ndarray) -> dict[str, list]:
    """Per-superpixel statistics by a plain loop over superpixels (the independent computation)."""
    stats: dict[str, list] = {"area": [], "label": [], "purity": [], "centroid": [], "mean_rgb": []}
    for s in range(int(superpixels.max()) + 1):
        ys, xs = np.nonzero(superpixels == s)
        values, counts = np.unique(labels[ys, xs], return_counts=True)
        best = values[counts == counts.max()].min()  # ties -> smallest label id
        stats["area"].append(len(ys))
        stats["label"].append(best)
        stats["purity"].append(counts.max() / len(ys))
        stats["centroid"].append((ys.mean(), xs.mean()))
        stats["mean_rgb"].append(rgb[ys, xs].astype(np.float64).mean(axis=0))
    return stats


def brute_force_majority(sp: np.ndarray, lab: np.ndarray, ignore: int | None) -> tuple[list[int | None], list[float]]:
    """Majority label (ties -> smallest) and purity per superpixel id, counting pixel by pixel;
    pixels with the `ignore` label do not vote; a superpixel without votes gets `ignore` and purity 0."""
    majority: list[int | None] = []
    purity: list[float] = []
    for s in range(int(sp.max()) + 1):
        votes = [int(v) for v in lab[sp == s] if ignore is None or v != ignore]
        if not votes:
            majority.append(ignore)
            purity.append(0.0)
            continue
        counts = Counter(votes)
        best = max(counts.values())
        majority.append(min(v for v, c in counts.items() if c == best))
        purity.append(best / len(votes))
    return majority, purity


# ----------------------------------------------------------------------------- brute-force metrics


def brute_force_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Mann-Whitney AUC: share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = scores[same][:, None], scores[~same][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def brute_force_pairs(embeddings: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> tuple[list[float], list[bool]]:
    """Scores -||e_i - e_j||^2 and same-label flags of every pair i < j of labelled, valid superpixels."""
    scores, same = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] and labels[j] and valid[i] and valid[j]:
                difference = np.asarray(embeddings[i], dtype=np.float64) - np.asarray(embeddings[j], dtype=np.float64)
                scores.append(-float(np.sum(difference**2)))
                same.append(bool(labels[i] == labels[j]))
    return scores, same


def brute_force_asa(superpixels: list[np.ndarray], labels: list[np.ndarray], ignore: int | None = 0) -> float:
    """Pixels agreeing with their superpixel's most common (non-ignored) label, over the counted pixels."""
    correct = total = 0
    for sp, lab in zip(superpixels, labels):
        for s in np.unique(sp):
            votes = [int(v) for v in lab[sp == s] if ignore is None or v != ignore]
            if votes:
                correct += Counter(votes).most_common(1)[0][1]
                total += len(votes)
    return correct / total


def brute_force_segmentation(pred: list[np.ndarray], gt: list[np.ndarray], ignore: int = 0) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU (classes present in the GT) and their mean, pixel by pixel."""
    pairs = [(int(g), int(p)) for ps, gs in zip(pred, gt) for p, g in zip(ps.ravel(), gs.ravel()) if g != ignore]
    iou = {}
    for c in sorted({g for g, _ in pairs}):
        intersection = sum(1 for g, p in pairs if g == c and p == c)
        union = sum(1 for g, p in pairs if g == c or p == c)
        iou[c] = intersection / union
    return {
        "pixel_accuracy": sum(g == p for g, p in pairs) / len(pairs),
        "per_class_iou": iou,
        "miou": sum(iou.values()) / len(iou),
    }


def brute_force_ari(truth: list[int], clusters: list[int]) -> float:
    """Adjusted Rand index from its definition: pair counts of the contingency table (Hubert & Arabie)."""
    table = Counter(zip(truth, clusters))
    rows, cols = Counter(truth), Counter(clusters)
    index = sum(math.comb(n, 2) for n in table.values())
    row_pairs = sum(math.comb(n, 2) for n in rows.values())
    col_pairs = sum(math.comb(n, 2) for n in cols.values())
    expected = row_pairs * col_pairs / math.comb(len(truth), 2)
    maximum = (row_pairs + col_pairs) / 2
    return (index - expected) / (maximum - expected)


def train_run_with_probe(shards: Path, run: Path, epochs: int) -> Path:
    """A tiny model trained on `shards` (no Ray, seed 0) saved like `spix train` in `run`, and a linear probe fitted
    on its training superpixels in RUN/eval/classifier.npz, where `spix infer --labels` looks for it."""
    import torch

    from spix.pipeline.shards import iter_samples, read_manifest
    from spix.trainer.checkpoint import model_meta, write_final_model
    from spix.trainer.config import train_config
    from spix.trainer.embedding import embed_superpixels
    from spix.trainer.loop import train_without_ray
    from spix.trainer.probe import LinearProbe

    model, _ = train_without_ray(train_config(shards=str(shards), out="", workers=1, epochs=epochs, batch_size=4, crop=64,
                                              preset="tiny", seed=0, gpu=False))
    manifest = read_manifest(str(shards))
    (run / "eval").mkdir(parents=True)
    write_final_model(run, model.state_dict(), model_meta("tiny", 128, manifest["params"], manifest["class_names"], {}))
    features, labels = [], []
    for sample in iter_samples(str(shards), "training"):
        keep = (sample.sp_label > 0) & (sample.sp_purity >= 0.5)
        features.append(embed_superpixels(model, sample.rgb, sample.superpixels, torch.device("cpu"))[keep])
        labels.append(sample.sp_label[keep])
    names = {i + 1: n for i, n in enumerate(manifest["class_names"])}
    LinearProbe(class_names=names).fit(np.concatenate(features), np.concatenate(labels)).save(run / "eval" / "classifier.npz")
    return run
