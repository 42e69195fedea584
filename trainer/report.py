"""The files of `spix eval`: metrics.json, report.md and PNG pictures (matplotlib when installed).

Everything is written inside the report folder. The pictures are optional: without matplotlib
(an extra, `pip install spix[plots]`) the report says so and the numbers are still complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spix.pipeline.files import write_text_atomic
from spix.trainer.evaluate import FEATURE_SETS

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CONFUSION_PICTURE = "confusion.png"
CURVES_PICTURE = "training_curves.png"
MAX_ANNOTATED_CLASSES = 20  # confusion cells get their number written in up to this many classes
HEADLINE = (  # (key, label) of the per-feature-set numbers, in table order
    ("pair_auc", "pair AUC"),
    ("pixel_accuracy", "pixel accuracy"),
    ("miou", "mIoU"),
    ("ari", "clustering ARI"),
)
SET_TITLES = {
    "trained": "trained network",
    "untrained": "untrained network",
    "baseline": "colour + position",
}
CURVES = (  # one panel each: (title, keys of RUN/metrics.jsonl plotted against the epoch)
    ("loss", ("train_loss", "val_loss")),
    ("mean pair distance", ("pos_dist", "neg_dist")),
    ("validation pair AUC", ("val_pair_auc",)),
)


# ----------------------------------------------------------------------------- metrics.json


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined metric is written as null."""
    return None if value is None or math.isnan(value) else float(value)


def metrics_document(results: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready form of evaluate_model's results plus where they came from."""
    sets = {}
    for name, scores in results["sets"].items():
        sets[name] = {key: finite_or_none(scores[key]) for key, _ in HEADLINE}
        sets[name]["ari_images"] = scores["ari_images"]
        sets[name]["per_class_iou"] = {str(c): v for c, v in scores["per_class_iou"].items()}
        sets[name]["confusion"] = np.asarray(scores["confusion"]).tolist()
    return {
        **context,
        "training_images": results["training_images"],
        "training_superpixels": results["training_superpixels"],
        "validation_images": results["validation_images"],
        "labelled_pixels": results["labelled_pixels"],
        "asa": finite_or_none(results["asa"]),
        "class_names": {str(c): name for c, name in results["class_names"].items()},
        "feature_sets": sets,
    }


# ----------------------------------------------------------------------------- report.md


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_rows(document: dict[str, Any]) -> list[list[str]]:
    """Metric rows with one column per feature set; ASA last, as the labelling ceiling."""
    sets = document["feature_sets"]
    rows = [[label] + [number(sets[name][key]) for name in FEATURE_SETS] for key, label in HEADLINE]
    asa = number(document["asa"])
    return rows + [["ASA (ceiling of pixel accuracy)"] + [asa] * len(FEATURE_SETS)]


def class_rows(document: dict[str, Any]) -> list[list[str]]:
    """Per-class IoU rows for the classes present in the validation ground truth."""
    sets = document["feature_sets"]
    present = sorted(set().union(*(sets[name]["per_class_iou"] for name in FEATURE_SETS)), key=int)
    return [
        [f"{c} {document['class_names'].get(c, '')}".strip()]
        + [number(sets[name]["per_class_iou"].get(c)) for name in FEATURE_SETS]
        for c in present
    ]


def report_markdown(document: dict[str, Any], pictures: list[str], notes: list[str]) -> str:
    header = ["metric"] + [SET_TITLES[name] for name in FEATURE_SETS]
    parts = [
        "# spix eval",
        f"checkpoint: `{document['checkpoint']}`  \nshards: `{document['shards']}`  \n"
        f"linear probes fitted on {document['training_superpixels']} superpixels of "
        f"{document['training_images']} training images; scored on {document['validation_images']} "
        f"validation images ({document['labelled_pixels']} labelled pixels).",
        markdown_table(header, summary_rows(document)),
        "Pair AUC: superpixel pairs within an image, same vs different label. Pixel accuracy and "
        "mIoU: a linear classifier per feature set, fitted on training superpixels, labels each "
        "validation superpixel; ASA bounds what any superpixel labelling can reach. ARI: k-means "
        "per image with k = classes present, averaged over images with at least two classes.",
        "## IoU per class",
        markdown_table(["class"] + [SET_TITLES[name] for name in FEATURE_SETS], class_rows(document)),
    ]
    parts += [f"![{Path(p).stem}]({p})" for p in pictures]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- pictures


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_training_log(path: Path) -> list[dict[str, Any]]:
    """The JSON object lines of RUN/metrics.jsonl; broken or non-object lines are skipped."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def curve(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records where both are numbers."""
    points = [
        (r["epoch"], r[key]) for r in records
        if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get(key), (int, float))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(plt: Any, records: list[dict[str, Any]], path: Path) -> bool:
    """One panel per CURVES entry that has data; False (nothing written) when none has."""
    panels = [(title, [(key, curve(records, key)) for key in keys]) for title, keys in CURVES]
    panels = [(title, lines) for title, lines in panels if any(xs for _, (xs, _) in lines)]
    if not panels:
        return False
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, (title, lines) in zip(axes[0], panels):
        for key, (xs, ys) in lines:
            if xs:
                axis.plot(xs, ys, marker="o", label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, counted from 1
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def plot_confusion(plt: Any, confusion: np.ndarray, class_names: dict[str, str], path: Path) -> None:
    """Row-normalised confusion (GT rows, predicted columns) of the classes in GT or prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    shown = [c for c in range(1, len(confusion)) if confusion[c].sum() > 0 or confusion[:, c].sum() > 0]
    matrix = confusion[np.ix_(shown, shown)]
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = [class_names.get(str(c), str(c)) for c in shown]
    side = min(4 + 0.35 * len(shown), 40)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(rates, vmin=0, vmax=1, cmap="viridis")
    axis.set_xticks(range(len(shown)), names, rotation=90, fontsize=8)
    axis.set_yticks(range(len(shown)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("ground truth")
    axis.set_title("trained network: share of each class's pixels")
    if len(shown) <= MAX_ANNOTATED_CLASSES:
        for (row, column), rate in np.ndenumerate(rates):
            axis.text(column, row, f"{rate:.2f}", ha="center", va="center", fontsize=7,
                      color="black" if rate > 0.5 else "white")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_pictures(document: dict[str, Any], training_log: Path, out: Path) -> tuple[list[str], list[str]]:
    """Write the PNGs that can be drawn; (their file names, notes on what was left out)."""
    plt = pyplot()
    if plt is None:
        return [], ["matplotlib is not installed (`pip install spix[plots]`): no pictures"]
    plot_confusion(plt, document["feature_sets"]["trained"]["confusion"], document["class_names"], out / CONFUSION_PICTURE)
    pictures, notes = [CONFUSION_PICTURE], []
    if not training_log.is_file():
        notes.append(f"no training log at {training_log}: no training curves")
    elif plot_training_curves(plt, read_training_log(training_log), out / CURVES_PICTURE):
        pictures.append(CURVES_PICTURE)
    else:
        notes.append(f"{training_log} holds no plottable epoch records: no training curves")
    return pictures, notes


# ----------------------------------------------------------------------------- all files


def write_report(out: Path, results: dict[str, Any], context: dict[str, Any], training_log: Path) -> dict[str, Any]:
    """metrics.json, the pictures and report.md in `out` (created); returns the metrics document."""
    out.mkdir(parents=True, exist_ok=True)
    document = metrics_document(results, context)
    write_text_atomic(out / METRICS_FILE, json.dumps(document, indent=1))
    pictures, notes = draw_pictures(document, training_log, out)
    write_text_atomic(out / REPORT_FILE, report_markdown(document, pictures, notes))
    return document
