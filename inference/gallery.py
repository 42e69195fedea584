"""OUT/index.html: each input beside its pictures, with relative links so the page opens from disk.

Pure functions (text and pictures in, nothing written): `spix infer` writes what they return.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from spix.inference.pictures import label_palette

COLUMNS = {  # output file key (outputs.FILES) -> column title, in page order
    "inputs": "input (as processed)",
    "features": "dominant features",
    "soft": "soft segmentation",
    "labels": "labels",
}

STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; }
table { border-collapse: collapse; }
th, td { padding: 6px; vertical-align: top; border-bottom: 1px solid #ddd; }
td img { height: 200px; width: auto; max-width: 360px; object-fit: contain; display: block; }
td.name { max-width: 14em; word-break: break-all; font-size: 90%; }
.errors li { font-family: monospace; }
"""


@dataclass(frozen=True)
class GalleryEntry:
    relpath: str  # of the input, relative to the input folder
    original: Path  # the input file itself
    files: dict[str, Path]  # output file key -> file (see outputs.output_files)


def link(target: Path, out: Path) -> str:
    """A URL-quoted link to `target` relative to OUT, so the page works from disk and when moved with its inputs."""
    return quote(Path(os.path.relpath(target, out)).as_posix())


def entry_row(entry: GalleryEntry, out: Path, kinds: list[str]) -> str:
    name = html.escape(entry.relpath)
    cells = [f'<td class="name"><a href="{link(entry.original, out)}">{name}</a></td>']
    for kind in kinds:
        src = link(entry.files[kind], out)
        cells.append(f'<td><a href="{src}"><img src="{src}" loading="lazy" alt="{html.escape(COLUMNS[kind])}"></a></td>')
    return "<tr>" + "".join(cells) + "</tr>"


def gallery_html(out: Path, entries: list[GalleryEntry], errors: list[dict[str, str]], legend: Path | None = None) -> str:
    """The whole page: a table of the processed images (a column per kind of picture written), the label legend
    when there is one, and the inputs that have no outputs."""
    kinds = [k for k in COLUMNS if any(k in e.files for e in entries)]
    header = "<tr><th>file</th>" + "".join(f"<th>{COLUMNS[k]}</th>" for k in kinds) + "</tr>"
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><title>spix infer</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>spix infer</h1>",
        f'<p>{len(entries)} images, {len(errors)} not processed '
        f'(<a href="errors.jsonl">errors.jsonl</a>); parameters and timings in <a href="infer.json">infer.json</a>.</p>',
    ]
    if legend is not None:
        parts.append(f'<p><img src="{link(legend, out)}" alt="label legend"></p>')
    parts.append(f"<table>{header}" + "".join(entry_row(e, out, kinds) for e in entries) + "</table>")
    if errors:
        items = "".join(f"<li>{html.escape(e['path'])}: {html.escape(e['reason'])}</li>" for e in errors)
        parts.append(f'<h2>Not processed</h2><ul class="errors">{items}</ul>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def legend_picture(class_names: dict[int, str], rows_per_column: int = 30) -> Image.Image:
    """Colour swatch and name of every class id of the label maps, in columns of `rows_per_column`."""
    font = ImageFont.load_default(size=14)
    ids = sorted(class_names)
    palette = label_palette()
    row_height, swatch = 20, 14
    labels = [f"{i} {class_names[i]}" for i in ids]
    column_width = swatch + 12 + max((int(font.getlength(t)) for t in labels), default=0) + 16
    columns = max(1, -(-len(ids) // rows_per_column))
    rows = min(len(ids), rows_per_column) or 1
    image = Image.new("RGB", (columns * column_width + 8, rows * row_height + 8), "white")
    draw = ImageDraw.Draw(image)
    for position, (class_id, text) in enumerate(zip(ids, labels)):
        x = 4 + (position // rows_per_column) * column_width
        y = 4 + (position % rows_per_column) * row_height
        colour = tuple(int(c) for c in palette[class_id])
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour, outline="black")
        draw.text((x + swatch + 6, y + 1), text, fill="black", font=font)
    return image
