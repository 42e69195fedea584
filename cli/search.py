"""`spix search OUT --image NAME --point Y,X`: the regions of a whole output folder most like the one at a point."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail

if TYPE_CHECKING:
    from spix.inference.search import Matches

S = "search"


def search(
    out: Path = typer.Argument(..., help="Output folder of `spix infer` (the one holding embeddings/)."),
    image: str = typer.Option(..., "--image", metavar="NAME", help="The image to search from: its path under the inferred folder, as `spix infer` listed it (e.g. val/0001.jpg)."),
    point: str = typer.Option(..., "--point", metavar="Y,X", help="Row and column of the pixel, 0-based, in the image as processed (the size of its superpixel map and of OUT/inputs/<name>.jpg, after --max-side), not the original file."),
    top: int | None = flag(S, "top", "Matches to list; the query's own superpixel is left out."),
    json_lines: bool | None = flag(S, "json", "One JSON object per match and line, with keys relative_path, superpixel, distance, y, x (the match's centroid).", "--json/--no-json"),
    config: Path | None = config_flag(S),
) -> None:
    """Find the regions most like the one at pixel (Y, X) of image NAME, in every image of OUT.

    The region is the superpixel under that pixel; the answer is the --top superpixels of the whole folder
    nearest to it.

    Distance: the squared Euclidean distance between superpixel embeddings (the metric the training loss
    shapes), exact, over every superpixel of OUT/embeddings/*.parquet. Each match is listed with its image, its
    superpixel id, its distance and its centroid (y, x). Unreadable Parquet files are skipped with a warning.
    """
    s = resolve(S, config, dict(top=top, json=json_lines))
    if s["top"] < 1:
        fail("--top must be >= 1")
    y, x = parse_point(point)
    from spix.inference.search import SearchError
    from spix.inference.search import search as find

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            query, matches = find(out, image, y, x, s["top"])
    except SearchError as exc:
        fail(str(exc))
    finally:
        for warning in caught:
            typer.echo(f"warning: {warning.message}", err=True)
    if s["json"]:
        print_json_lines(matches)
    else:
        print_table(query, matches)


def parse_point(text: str) -> tuple[int, int]:
    """'Y,X' -> (y, x), two whole numbers >= 0; anything else is a one-line error."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        fail(f"--point takes Y,X: two whole numbers >= 0, row then column (e.g. 120,64), not {text!r}")
    return int(parts[0]), int(parts[1])


def match_records(matches: Matches) -> list[dict]:
    return [
        {"relative_path": str(relpath), "superpixel": int(superpixel), "distance": float(distance),
         "y": float(centroid[0]), "x": float(centroid[1])}
        for relpath, superpixel, distance, centroid in zip(matches.relpath, matches.superpixel, matches.distance, matches.centroid)
    ]


def print_json_lines(matches: Matches) -> None:
    for record in match_records(matches):
        typer.echo(json.dumps(record, ensure_ascii=False))


def print_table(query: Matches, matches: Matches) -> None:
    y, x = query.centroid[0]
    typer.echo(f"query: {query.relpath[0]}, superpixel {int(query.superpixel[0])} (centroid y {y:.1f}, x {x:.1f})")
    typer.echo(f"{'rank':>4}  {'distance':>10}  {'superpixel':>10}  {'y':>7}  {'x':>7}  image")
    for rank, record in enumerate(match_records(matches), 1):
        typer.echo(f"{rank:>4}  {record['distance']:>10.4f}  {record['superpixel']:>10}  {record['y']:>7.1f}  "
                   f"{record['x']:>7.1f}  {record['relative_path']}")
