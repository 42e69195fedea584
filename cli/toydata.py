"""`spix make-toy-data`: a synthetic dataset in the exact ADEChallengeData2016 layout."""

from __future__ import annotations

from pathlib import Path

import typer

from spix.cli.config import resolve
from spix.cli.ui import fail


def make_toy_data(
    out: Path = typer.Argument(..., help="Folder to create (becomes the data root, e.g. demo/ADEChallengeData2016)."),
    train: int | None = typer.Option(None, help="Training images (default: 64)."),
    val: int | None = typer.Option(None, help="Validation images (default: 16)."),
    classes: int | None = typer.Option(None, help="Number of texture classes K (labels 1..K) (default: 8)."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same files (default: 0)."),
    min_side: int | None = typer.Option(None, help="Smallest image side (default: 256)."),
    max_side: int | None = typer.Option(None, help="Largest image side (default: 512)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with a \\[toy] section."),
) -> None:
    """Write a synthetic dataset whose classes differ by texture, not by colour.

    Layout: OUT/images/{training,validation}/*.jpg, OUT/annotations/{...}/*.png (0 = unlabelled),
    OUT/objectInfo150.csv. Every test and the demo use it, so the code path is the ADE20K one.
    """
    from spix.pipeline.toydata import make_toy_dataset

    s = resolve(
        "toy",
        config,
        dict(train=train, val=val, classes=classes, seed=seed, min_side=min_side, max_side=max_side),
    )
    if s["classes"] < 2 or s["min_side"] < 8 or s["min_side"] > s["max_side"]:
        raise typer.BadParameter("need --classes >= 2 and 8 <= --min-side <= --max-side")
    try:
        make_toy_dataset(
            out,
            n_train=s["train"],
            n_val=s["val"],
            n_classes=s["classes"],
            seed=s["seed"],
            min_side=s["min_side"],
            max_side=s["max_side"],
        )
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {s['train']} training and {s['val']} validation images with {s['classes']} classes to {out}")
