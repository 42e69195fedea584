"""`spix eval`: the DESIGN.md metrics of a trained run beside the untrained network and a colour baseline."""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from spix.cli.config import resolve
from spix.cli.ui import fail, progress_bar

CLASSIFIER_FILE = "classifier.npz"  # + classifier.json; read by `spix infer --labels`
RUNS_DIR = Path("runs")  # where `spix train` puts its runs


def evaluate(
    shards: str | None = typer.Option(None, help="Shard folder from `spix preprocess` (local path or URI) (default: data/shards)."),
    checkpoint: Path | None = typer.Option(None, help="Run folder or its model.pt (default: the newest finished run under runs/)."),
    out: Path | None = typer.Option(None, help="Report folder (default: RUN/eval)."),
    max_train_images: int | None = typer.Option(None, help="Training images the linear classifiers are fitted on; 0 = all (default: 200)."),
    device: str | None = typer.Option(None, help="'auto' (GPU when there is one), 'cpu', 'cuda' or 'cuda:N' (default: auto)."),
    seed: int | None = typer.Option(None, help="Seed of the untrained network, superpixel and pair sampling and k-means (default: 0)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with an \\[eval] section; flags override it."),
) -> None:
    """Score a trained run on the validation split: pair AUC, ASA, hard labelling (pixel accuracy,
    mIoU, IoU per class) and clustering ARI, each beside the untrained network and the mean colour +
    position baseline.

    Writes OUT/metrics.json, OUT/report.md, pictures (confusion matrix, training curves) and
    OUT/classifier.npz + .json, the trained network's linear classifier for `spix infer --labels`.
    """
    import torch

    from spix.pipeline.shards import ShardFormatError, read_manifest
    from spix.trainer.checkpoint import CheckpointError, load_model, newest_finished_run
    from spix.trainer.evaluate import EvalSettings, EvaluationError, evaluate_model
    from spix.trainer.report import write_report

    s = resolve(
        "eval",
        config,
        dict(shards=shards, checkpoint=checkpoint, out=out, max_train_images=max_train_images, device=device, seed=seed),
    )
    if s["max_train_images"] < 0 or s["max_superpixels_per_image"] < 1 or s["max_pairs_per_image"] < 1:
        fail("--max-train-images must be >= 0, max_superpixels_per_image and max_pairs_per_image >= 1")
    settings = EvalSettings(
        max_train_images=s["max_train_images"], max_superpixels_per_image=s["max_superpixels_per_image"],
        min_purity=float(s["min_purity"]), max_pairs_per_image=s["max_pairs_per_image"], seed=s["seed"],
    )
    device_name = pick_device(s["device"])
    try:
        run = Path(s["checkpoint"]) if s["checkpoint"] else newest_finished_run(RUNS_DIR)
        run_dir = run if run.is_dir() else run.parent
        model, meta = load_model(run, device_name)
    except (CheckpointError, ValueError, KeyError, TypeError, OSError, pickle.UnpicklingError) as exc:
        fail(f"cannot load the model: {exc}")
    report_dir = Path(s["out"]) if s["out"] else run_dir / "eval"
    bar = progress_bar("eval")
    try:
        tasks = {
            split: bar.add_task(f"{split} images", total=total)
            for split, total in images_to_read(read_manifest(str(s["shards"])), settings.max_train_images).items()
        }
        with bar:
            results, probes = evaluate_model(
                str(s["shards"]), model, meta, device_name, settings,
                on_image=lambda split: bar.advance(tasks[split]),
            )
    except (ShardFormatError, EvaluationError) as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:  # unreadable shard rows: decode errors, truncated files
        fail(f"cannot read the shards at {s['shards']}: {exc}")
    context = {"checkpoint": str(run), "shards": str(s["shards"]), "settings": asdict(settings), "torch": torch.__version__}
    try:
        document = write_report(report_dir, results, context, run_dir / "metrics.jsonl")
        probes["trained"].save(report_dir / CLASSIFIER_FILE)
    except OSError as exc:
        fail(f"cannot write the report to {report_dir}: {exc}")
    print_summary(document, report_dir)


def images_to_read(manifest: dict[str, Any], max_train_images: int) -> dict[str, int | None]:
    """Images per split for the progress bars (None where the manifest does not say)."""
    counts = {split: manifest.get("splits", {}).get(split, {}).get("images") for split in ("training", "validation")}
    if max_train_images > 0 and counts["training"] is not None:
        counts["training"] = min(counts["training"], max_train_images)
    return counts


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
