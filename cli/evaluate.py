"""`spix eval`: the DESIGN.md metrics of a trained run beside the untrained network and a colour baseline."""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any


from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail, progress
from spix.configs import build

S = "eval"


def evaluate(
    shards: str | None = flag(S, "shards", "Shard folder from `spix preprocess` (local path or URI)."),
    checkpoint: str | None = flag(S, "checkpoint", "Run folder or its model.pt.", empty="the newest finished run under runs/"),
    out: Path | None = flag(S, "out", "Report folder.", empty="RUN/eval"),
    max_train_images: int | None = flag(S, "max_train_images", "Training images the linear classifiers are fitted on; 0 = all."),
    device: str | None = flag(S, "device", "'auto' (GPU when there is one), 'cpu', 'cuda' or 'cuda:N'."),
    seed: int | None = flag(S, "seed", "Seed of the untrained network, superpixel and pair sampling and k-means."),
    config: Path | None = config_flag(S),
) -> None:
    """Score a trained run on the validation split: pair AUC, ASA, hard labelling (pixel accuracy,
    mIoU, IoU per class) and clustering ARI, each beside the untrained network and the mean colour +
    position baseline.

    Writes OUT/metrics.json, OUT/report.md, pictures (confusion matrix, training curves) and
    OUT/classifier.npz + .json, the trained network's linear classifier for `spix infer --labels`.
    """
    s = resolve(
        S, config,
        dict(shards=shards, checkpoint=checkpoint, out=out, max_train_images=max_train_images, device=device, seed=seed),
    )
    if s["max_train_images"] < 0 or s["max_superpixels_per_image"] < 1 or s["max_pairs_per_image"] < 1:
        fail("--max-train-images must be >= 0, max_superpixels_per_image and max_pairs_per_image >= 1")
    import torch

    from spix.pipeline.shards import ShardFormatError, read_manifest
    from spix.trainer.checkpoint import CheckpointError, load_model, resolve_model
    from spix.trainer.evaluate import EvalSettings, EvaluationError, evaluate_model
    from spix.trainer.probe import CLASSIFIER_FILE
    from spix.trainer.report import write_report

    settings = build(EvalSettings, s)
    device_name = pick_device(s["device"])
    try:
        weights, run_dir = resolve_model(s["checkpoint"])
        model, meta = load_model(weights, device_name)
    except (CheckpointError, ValueError, KeyError, TypeError, OSError, pickle.UnpicklingError) as exc:
        fail(f"cannot load the model: {exc}")
    report_dir = Path(s["out"]) if s["out"] else run_dir / "eval"
    try:
        with progress("eval", "training + validation images") as (on_start, on_progress):
            on_start(images_to_read(read_manifest(str(s["shards"])), settings.max_train_images))
            results, probes = evaluate_model(
                str(s["shards"]), model, meta, device_name, settings, on_image=lambda split: on_progress(1),
            )
    except (ShardFormatError, EvaluationError) as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:  # unreadable shard rows: decode errors, truncated files
        fail(f"cannot read the shards at {s['shards']}: {exc}")
    context = {"checkpoint": str(weights), "shards": str(s["shards"]), "settings": asdict(settings), "torch": torch.__version__}
    try:
        document = write_report(report_dir, results, context, run_dir / "metrics.jsonl")
        probes["trained"].save(report_dir / CLASSIFIER_FILE)
    except OSError as exc:
        fail(f"cannot write the report to {report_dir}: {exc}")
    print_summary(document, report_dir)


def images_to_read(manifest: dict[str, Any], max_train_images: int) -> int:
    """Training images the probes read plus validation images, for the progress bar (0 when unknown)."""
    counts = {split: manifest.get("splits", {}).get(split, {}).get("images", 0) for split in ("training", "validation")}
    if max_train_images > 0:
        counts["training"] = min(counts["training"], max_train_images)
    return counts["training"] + counts["validation"]


def pick_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; other names pass through after a check."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        fail(f"--device {name!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name}: no CUDA GPU is visible")
    return name


def print_summary(document: dict[str, Any], report_dir: Path) -> None:
    """The report.md headline table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    from spix.trainer.evaluate import FEATURE_SETS
    from spix.trainer.report import SET_TITLES, summary_rows

    table = Table(title=f"spix eval: {document['validation_images']} validation images")
    table.add_column("metric")
    for name in FEATURE_SETS:
        table.add_column(SET_TITLES[name], justify="right")
    for row in summary_rows(document):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"report: {report_dir / 'report.md'}")
