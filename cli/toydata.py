"""`spix make-toy-data`: a synthetic dataset in the exact ADEChallengeData2016 layout."""

from __future__ import annotations

from pathlib import Path

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail

S = "toy"


def make_toy_data(
    out: Path = typer.Argument(..., metavar="OUT", help="Folder to create (becomes the data root, e.g. demo/ADEChallengeData2016)."),
    train: int | None = flag(S, "train", "Training images."),
    val: int | None = flag(S, "val", "Validation images."),
    classes: int | None = flag(S, "classes", "Number of texture classes K (labels 1..K)."),
    seed: int | None = flag(S, "seed", "Random seed; the same seed gives the same files."),
    min_side: int | None = flag(S, "min_side", "Smallest image side."),
    max_side: int | None = flag(S, "max_side", "Largest image side."),
    config: Path | None = config_flag(S),
) -> None:
    """Write a synthetic dataset whose classes differ by texture, not by colour.

    Layout: OUT/images/{training,validation}/*.jpg, OUT/annotations/{...}/*.png (0 = unlabelled),
    OUT/objectInfo150.csv. Every test and the demo use it, so the code path is the ADE20K one.
    """
    s = resolve(S, config, dict(train=train, val=val, classes=classes, seed=seed, min_side=min_side, max_side=max_side))
    if s["classes"] < 2 or s["min_side"] < 8 or s["min_side"] > s["max_side"]:
        fail("need --classes >= 2 and 8 <= --min-side <= --max-side")
    from spix.pipeline.toydata import make_toy_dataset

    try:
        make_toy_dataset(out, n_train=s["train"], n_val=s["val"], n_classes=s["classes"], seed=s["seed"],
                         min_side=s["min_side"], max_side=s["max_side"])
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {s['train']} training and {s['val']} validation images with {s['classes']} classes to {out}")
