"""OUT/index.html: each input beside its pictures, and a region-search viewer, with relative links so the page
opens from disk.

The viewer: click a point of any picture, and the superpixels nearest to the one under it (the squared
Euclidean distance between embeddings that `spix search` ranks by) light up in every image of the page, with
a ranked strip of the best matches. It runs in the page, in plain JavaScript, on the compact files
OUT/search/<name>.js that `spix infer` writes beside the Parquet embeddings (outputs.search_script). They
are loaded with <script> tags, a few at a time after the page has loaded, because browsers refuse fetch() of
file:// URLs; pictures load lazily as their rows scroll into view, and overlays are drawn for visible rows
only. The table has fixed column widths and pictures scale to them, so the page fits from 1280 px up.

`gallery_html` and `legend_picture` are pure; `write_gallery` also writes the ground-truth pictures when the
input folder sits in an ADE-layout data root (FOLDER = ROOT/images/<split>, ROOT/annotations/<split>/).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spix.configs import defaults
from spix.inference.outputs import write_png
from spix.inference.pictures import distinct_colours, label_palette
from spix.pipeline.dataset import read_class_names
from spix.pipeline.files import write_text_atomic

GALLERY = "index.html"
TRUTH_FOLDER = "truth"
COLUMNS = {  # picture key (outputs.FILES, plus the ground truth) -> column title, in page order
    "inputs": "input (as processed)",
    "features": "dominant features",
    "soft": "soft segmentation",
    "labels": "labels",
    "truth": "ground truth",
}
PICTURE_HEIGHT = 240  # largest height of a picture on the page, in CSS pixels
LIT_SHARES = (0.1, 0.2, 0.5, 1, 2, 5, 10)  # % of all regions the viewer can light up
LIT_SHARE = 1  # the one lit when the page opens

STYLE = f"""
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
table.gallery {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
col.name {{ width: 10em; }}
th, td {{ padding: 4px; vertical-align: top; border-bottom: 1px solid #ddd; text-align: left; }}
td.name {{ overflow-wrap: anywhere; font-size: 90%; }}
tr.lit td.name {{ background: #fff6bf; }}
tr.match td.name {{ background: #ffd2c2; }}
.pic {{ position: relative; width: min(100%, calc({PICTURE_HEIGHT}px * var(--r))); aspect-ratio: var(--r); }}
.pic img, .pic canvas {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%; display: block; }}
.search-on .pic img {{ cursor: crosshair; }}
.pic canvas {{ pointer-events: none; }}
.missing {{ color: #888; font-size: 90%; }}
img.legend {{ max-width: 100%; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle; border: 1px solid #444; margin: 0 2px 0 8px; }}
.search {{ position: sticky; top: 0; z-index: 2; background: #fafafa; border-bottom: 1px solid #bbb; padding: 4px 0; }}
.strip {{ display: flex; flex-wrap: wrap; gap: 6px; margin-top: 4px; max-height: 260px; overflow-y: auto; }}
.strip figure {{ margin: 0; width: 96px; font-size: 75%; cursor: pointer; }}
.strip figcaption {{ overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.errors li {{ font-family: monospace; overflow-wrap: anywhere; }}
"""

VIEWER_SCRIPT = r"""
"use strict";
// Region search in the page: the same squared Euclidean distance as `spix search`, on int8 codes.
const config = JSON.parse(document.getElementById("spix-data").textContent);
const entries = config.entries;
const byName = new Map(entries.map((e, i) => [e.name, i]));
const records = new Array(entries.length).fill(null);
const rows = Array.from(document.querySelectorAll("tr[data-index]"));
const visible = new Set();
const thumbs = new Map();
let query = null;  // the last query: {image, superpixel, y, x, distances per image, top, threshold}
let loading = null;
const DIM = [0, 0, 0, 160];

function bytes(text) {
  const raw = atob(text), out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out.buffer;
}

window.spixSearch = {
  add(r) {  // called by each search/<name>.js
    const i = byName.get(r.name);
    if (i === undefined) return;
    records[i] = {
      count: r.count, dim: r.dim, stride: r.stride, mh: r.map_height, mw: r.map_width,
      mean: new Float32Array(bytes(r.mean)), step: new Float32Array(bytes(r.step)), codes: new Int8Array(bytes(r.codes)),
      centroid: new Float32Array(bytes(r.centroid)), starts: new Uint32Array(bytes(r.run_starts)),
      ids: new Uint16Array(bytes(r.run_ids)),
    };
  },
};

function status(text) { document.getElementById("search-status").textContent = text; }

function loadAll() {  // <script> tags, a few at a time: browsers refuse fetch() of file:// URLs
  if (loading) return loading;
  const queue = entries.map((e, i) => i).filter((i) => entries[i].search);
  let next = 0, done = 0;
  loading = new Promise((resolve) => {
    const start = () => {
      if (next >= queue.length) return;
      const i = queue[next++], tag = document.createElement("script");
      tag.src = entries[i].search;
      tag.onload = tag.onerror = () => {
        tag.remove();
        done++;
        if (done % 50 === 0 || done === queue.length) status(`search data: ${done} / ${queue.length} images loaded`);
        if (done === queue.length) resolve(records.filter((r) => !r).length); else start();
      };
      document.head.appendChild(tag);
    };
    for (let k = 0; k < 8; k++) start();
    if (!queue.length) resolve(entries.length);
  });
  return loading;
}

function idAt(r, index) {  // superpixel id of map cell `index`: binary search over the run starts
  let lo = 0, hi = r.starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (r.starts[mid] <= index) lo = mid; else hi = mid - 1;
  }
  return r.ids[lo];
}

function kthSmallest(a, k) {  // quickselect, in place
  let lo = 0, hi = a.length - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) { const t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (k <= j) hi = j; else if (k >= i) lo = i; else break;
  }
  return a[k];
}

function rank(qi, qs, top) {
  const q = records[qi], dim = q.dim, vector = new Float64Array(dim);
  for (let d = 0; d < dim; d++) vector[d] = q.mean[d] + q.codes[qs * dim + d] * q.step[qs];
  const distances = [], best = [];  // best: [distance, image, superpixel], sorted, ties in folder order
  let total = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    if (!r || r.dim !== dim) { distances.push(null); continue; }
    const out = new Float64Array(r.count), offset = new Float64Array(dim);
    for (let d = 0; d < dim; d++) offset[d] = vector[d] - r.mean[d];
    for (let s = 0; s < r.count; s++) {
      const step = r.step[s], base = s * dim;
      let sum = 0;
      for (let d = 0; d < dim; d++) { const diff = offset[d] - r.codes[base + d] * step; sum += diff * diff; }
      out[s] = sum;
    }
    if (i === qi) out[qs] = Infinity;  // the query itself is no match
    distances.push(out);
    total += r.count;
    for (let s = 0; s < r.count; s++) {
      if (best.length === top && out[s] >= best[top - 1][0]) continue;
      let at = best.length;
      while (at > 0 && best[at - 1][0] > out[s]) at--;
      best.splice(at, 0, [out[s], i, s]);
      if (best.length > top) best.pop();
    }
  }
  return { distances, best: best.filter((b) => b[0] !== Infinity), total };
}

function litThreshold(distances, total, share, top) {
  const all = new Float64Array(total);
  let at = 0;
  for (const d of distances) if (d) { all.set(d, at); at += d.length; }
  const k = Math.min(total - 1, Math.max(top, Math.round(share * total)) - 1);
  return k >= 0 ? kthSmallest(all, k) : -Infinity;
}

async function search(qi, y, x) {
  const record = records[qi] || (await loadAll(), records[qi]);
  if (!record) { status(`no search data for ${entries[qi].relpath} (search/${entries[qi].name}.js is missing)`); return; }
  const failed = await loadAll();
  const cy = Math.floor(y / record.stride), cx = Math.floor(x / record.stride);
  const superpixel = idAt(record, cy * record.mw + cx);
  const top = Math.max(1, parseInt(document.getElementById("search-top").value, 10) || config.top);
  const share = parseFloat(document.getElementById("search-lit").value) / 100;
  const start = performance.now();
  const { distances, best, total } = rank(qi, superpixel, top);
  const threshold = litThreshold(distances, total, share, top);
  const ms = performance.now() - start;
  query = { image: qi, superpixel, y: cy * record.stride, x: cx * record.stride, distances, threshold,
            top: new Map(best.map((b, r) => [`${b[1]}/${b[2]}`, r])), best };
  window.spixViewer.last = {
    relpath: entries[qi].relpath, superpixel, y: query.y, x: query.x, ms, total, threshold, images: records.filter(Boolean).length,
    ranking: best.map((b) => ({ relpath: entries[b[1]].relpath, superpixel: b[2], distance: b[0] })),
  };
  const missing = failed ? `; ${failed} images without search data` : "";
  status(`${entries[qi].relpath}, superpixel ${superpixel} at (${query.y}, ${query.x}): best ${best.length} of ` +
         `${total.toLocaleString()} superpixels in ${window.spixViewer.last.images} images, ${ms.toFixed(0)} ms${missing}`);
  rows.forEach((row, i) => row.classList.toggle("match", best.some((b) => b[1] === i)));
  rows.forEach((row, i) => row.classList.toggle("lit", !!distances[i] && distances[i].some((d) => d <= threshold)));
  visible.forEach(draw);
  drawStrip();
}

function colourOf(i, s) {  // RGBA over superpixel s of image i under the last query: what does not match is dimmed
  if (!query.distances[i]) return DIM;
  if (i === query.image && s === query.superpixel) return [0, 200, 255, 150];
  if (query.top.has(`${i}/${s}`)) return [255, 60, 0, 130];
  return query.distances[i][s] <= query.threshold ? null : DIM;
}

function draw(i) {
  const canvas = rows[i].querySelector("canvas.overlay"), r = records[i];
  if (!canvas) return;
  const context = canvas.getContext("2d");
  if (!r || !query) { context.clearRect(0, 0, canvas.width, canvas.height); return; }
  canvas.width = r.mw; canvas.height = r.mh;
  const picture = context.createImageData(r.mw, r.mh), pixels = picture.data, size = r.mw * r.mh;
  for (let k = 0; k < r.starts.length; k++) {
    const colour = colourOf(i, r.ids[k]);
    if (!colour) continue;
    const end = k + 1 < r.starts.length ? r.starts[k + 1] : size;
    for (let p = r.starts[k]; p < end; p++) pixels.set(colour, p * 4);
  }
  context.putImageData(picture, 0, 0);
}

function drawStrip() {
  const strip = document.getElementById("search-strip");
  strip.replaceChildren();
  query.best.forEach(([distance, i, s], position) => {
    const r = records[i], item = document.createElement("figure"), canvas = document.createElement("canvas");
    item.className = "match";
    Object.assign(item.dataset, { relpath: entries[i].relpath, superpixel: s, rank: position + 1, distance });
    item.title = `${entries[i].relpath}, superpixel ${s}, distance ${distance.toFixed(4)}`;
    canvas.width = canvas.height = 96;
    const caption = document.createElement("figcaption");
    caption.textContent = `${position + 1}. ${entries[i].relpath.split("/").pop()} · ${distance.toFixed(3)}`;
    item.append(canvas, caption);
    item.onclick = () => rows[i].scrollIntoView({ block: "center" });
    strip.appendChild(item);
    const side = Math.max(48, 3 * Math.sqrt(entries[i].width * entries[i].height / r.count));
    const sy = r.centroid[2 * s] - side / 2, sx = r.centroid[2 * s + 1] - side / 2;
    thumb(i).then((image) => {
      const context = canvas.getContext("2d"), scale = 96 / side, cell = r.stride * scale;
      context.drawImage(image, sx, sy, side, side, 0, 0, 96, 96);
      context.fillStyle = "rgba(0, 0, 0, 0.6)";
      const y0 = Math.max(0, Math.floor(sy / r.stride)), y1 = Math.min(r.mh, Math.ceil((sy + side) / r.stride));
      const x0 = Math.max(0, Math.floor(sx / r.stride)), x1 = Math.min(r.mw, Math.ceil((sx + side) / r.stride));
      for (let cy = y0; cy < y1; cy++) {
        for (let cx = x0; cx < x1; cx++) {
          if (idAt(r, cy * r.mw + cx) !== s) context.fillRect((cx * r.stride - sx) * scale, (cy * r.stride - sy) * scale, cell, cell);
        }
      }
    }, () => {});
  });
}

function thumb(i) {  // the row's picture, loaded once
  if (!thumbs.has(i)) {
    thumbs.set(i, new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = reject;
      image.src = entries[i].picture;
    }));
  }
  return thumbs.get(i);
}

document.querySelector("table.gallery").addEventListener("click", (event) => {
  const picture = event.target.closest(".pic");
  if (!picture || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  const i = Number(picture.closest("tr").dataset.index), box = picture.getBoundingClientRect(), e = entries[i];
  const y = Math.min(e.height - 1, Math.floor((event.clientY - box.top) / box.height * e.height));
  const x = Math.min(e.width - 1, Math.floor((event.clientX - box.left) / box.width * e.width));
  search(i, Math.max(0, y), Math.max(0, x));
});
for (const id of ["search-top", "search-lit"]) {
  document.getElementById(id).addEventListener("change", () => { if (query) search(query.image, query.y, query.x); });
}
document.getElementById("search-clear").addEventListener("click", () => {
  query = null;
  rows.forEach((row) => row.classList.remove("match", "lit"));
  visible.forEach(draw);
  document.getElementById("search-strip").replaceChildren();
  status("click a point of any picture");
});
const observer = new IntersectionObserver((seen) => {
  for (const item of seen) {
    const i = Number(item.target.dataset.index);
    if (item.isIntersecting) { visible.add(i); draw(i); } else visible.delete(i);
  }
}, { rootMargin: "200px" });
rows.forEach((row) => observer.observe(row));
window.spixViewer = { search, loadAll, last: null };
window.addEventListener("load", () => loadAll());
"""


@dataclass(frozen=True)
class GalleryEntry:
    relpath: str  # of the input, relative to the input folder
    name: str  # its output name (outputs.output_names)
    original: Path  # the input file itself
    files: dict[str, Path]  # output file key -> file (see outputs.output_files), plus "truth" when there is one
    size: tuple[int, int] = (0, 0)  # (height, width) as processed; (0, 0) when it has no picture


def link(target: Path, out: Path) -> str:
    """A URL-quoted link to `target` relative to OUT, so the page works from disk and when moved with its inputs."""
    return quote(Path(os.path.relpath(target, out)).as_posix())


# ----------------------------------------------------------------------------- ground truth


def annotations_folder(folder: Path) -> Path | None:
    """ROOT/annotations/<split> when `folder` is ROOT/images/<split> (ADE layout) and it exists."""
    candidate = folder.parent.parent / "annotations" / folder.name
    return candidate if folder.parent.name == "images" and candidate.is_dir() else None


def truth_picture(annotation: Path, size: tuple[int, int]) -> Image.Image:
    """An ADE annotation (uint8 class ids) as a palette PNG of the processed size, in the label maps' colours."""
    with Image.open(annotation) as image:
        ids = np.asarray(image if image.mode in ("L", "P") else image.convert("L"), np.uint8)
    picture = Image.fromarray(ids).resize((size[1], size[0]), Image.Resampling.NEAREST)
    picture.putpalette(label_palette().ravel().tolist())  # the L image becomes a P image: values stay class ids
    return picture


def add_ground_truth(out: Path, folder: Path, entries: list[GalleryEntry]) -> list[GalleryEntry]:
    """Entries with OUT/truth/<name>.png for those whose annotation exists (written when missing or older than
    the annotation or the processed picture)."""
    annotations = annotations_folder(folder)
    if annotations is None:
        return entries
    result = []
    for entry in entries:
        annotation = annotations / Path(entry.relpath).with_suffix(".png")
        target = out / TRUTH_FOLDER / f"{entry.name}.png"
        if entry.size == (0, 0) or not annotation.is_file():
            result.append(entry)
            continue
        sources = [annotation, *(p for k, p in entry.files.items() if k in COLUMNS)]
        if not target.is_file() or target.stat().st_mtime_ns < max(p.stat().st_mtime_ns for p in sources):
            write_png(target, truth_picture(annotation, entry.size))
        result.append(replace(entry, files={**entry.files, "truth": target}))
    return result


# ----------------------------------------------------------------------------- the page


def picture_size(entry: GalleryEntry) -> tuple[int, int]:
    """(height, width) of the entry's pictures, from the header of the first one; (0, 0) without pictures."""
    for key in COLUMNS:
        if key in entry.files:
            with Image.open(entry.files[key]) as image:
                return image.height, image.width
    return 0, 0


def picture_cell(entry: GalleryEntry, kind: str, out: Path, overlay: bool) -> str:
    if kind not in entry.files:
        return '<td class="missing">none</td>'
    src = link(entry.files[kind], out)
    height, width = entry.size
    canvas = '<canvas class="overlay"></canvas>' if overlay else ""
    return (f'<td><a href="{src}"><div class="pic" style="--r: {width / height:.5f}"><img src="{src}" loading="lazy" '
            f'width="{width}" height="{height}" alt="{html.escape(COLUMNS[kind])}">{canvas}</div></a></td>')


def entry_row(index: int, entry: GalleryEntry, out: Path, kinds: list[str]) -> str:
    name = html.escape(entry.relpath)
    cells = [f'<td class="name" title="{name}"><a href="{link(entry.original, out)}">{name}</a></td>']
    cells += [picture_cell(entry, kind, out, overlay=position == 0) for position, kind in enumerate(kinds)]
    return f'<tr data-index="{index}">' + "".join(cells) + "</tr>"


def soft_legend(soft_layers: int) -> str:
    swatches = "".join(f'<span class="swatch" style="background: rgb{tuple(int(c) for c in colour)}"></span>{k + 1}'
                       for k, colour in enumerate(distinct_colours(soft_layers)))
    return (f"<p>Soft segmentation: each image's {soft_layers} soft layers, coloured by layer{swatches} (layer 1 covers "
            "the most area). They are clusters of that image's own embeddings, not classes: layer 2 of one image "
            "need not resemble layer 2 of another, and these colours say nothing about the label colours.</p>")


def viewer_panel(top: int) -> str:
    shares = "".join(f'<option value="{s}"{" selected" if s == LIT_SHARE else ""}>{s}%</option>' for s in LIT_SHARES)
    return (
        '<div class="search" id="search"><b>Region search</b>: click a point of any picture. '
        f'<label>best <input id="search-top" type="number" min="1" max="200" value="{top}" style="width: 4em"></label> '
        'matches<span class="swatch" style="background: rgb(255, 150, 110)"></span> '
        f'<label>and the nearest <select id="search-lit">{shares}</select> of all regions</label> stay lit, '
        'the rest is dimmed; the clicked region<span class="swatch" style="background: rgb(90, 200, 240)"></span>. '
        '<button id="search-clear" type="button">clear</button> '
        '<span id="search-status">click a point of any picture</span>'
        '<div class="strip" id="search-strip"></div></div>'
    )


def viewer_data(entries: list[GalleryEntry], out: Path, kinds: list[str], top: int) -> str:
    """The viewer's list of images as JSON, safe inside a <script> element."""
    items = [
        {"name": e.name, "relpath": e.relpath, "height": e.size[0], "width": e.size[1],
         "search": link(e.files["search"], out) if "search" in e.files else None,
         "picture": next((link(e.files[k], out) for k in kinds if k in e.files), None)}
        for e in entries
    ]
    return json.dumps({"top": top, "entries": items}).replace("</", "<\\/")


def gallery_html(
    out: Path, entries: list[GalleryEntry], errors: list[dict[str, str]], legend: Path | None = None,
    soft_layers: int = 0,
) -> str:
    """The whole page: the viewer (when the images have search files), the legends, a table of the processed
    images (a column per kind of picture written), and the inputs that have no outputs."""
    kinds = [k for k in COLUMNS if any(k in e.files for e in entries)]
    searchable = bool(kinds) and any("search" in e.files for e in entries)
    header = '<colgroup><col class="name">' + "<col>" * len(kinds) + "</colgroup>"
    header += "<tr><th>file</th>" + "".join(f"<th>{COLUMNS[k]}</th>" for k in kinds) + "</tr>"
    top = defaults("search")["top"]
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>spix infer</title>',
        f"<style>{STYLE}</style></head>" + ('<body class="search-on">' if searchable else "<body>"),
        "<h1>spix infer</h1>",
        f'<p>{len(entries)} images, {len(errors)} not processed '
        f'(<a href="errors.jsonl">errors.jsonl</a>); parameters and timings in <a href="infer.json">infer.json</a>.</p>',
    ]
    if searchable:
        parts.append(viewer_panel(top))
    if "soft" in kinds and soft_layers:
        parts.append(soft_legend(soft_layers))
    if legend is not None:
        parts.append(f'<p>Labels{" and ground truth" if "truth" in kinds else ""}:<br><img class="legend" '
                     f'src="{link(legend, out)}" alt="label legend"></p>')
    rows = "".join(entry_row(i, e, out, kinds) for i, e in enumerate(entries))
    parts.append(f'<table class="gallery">{header}{rows}</table>')
    if errors:
        items = "".join(f"<li>{html.escape(e['path'])}: {html.escape(e['reason'])}</li>" for e in errors)
        parts.append(f'<h2>Not processed</h2><ul class="errors">{items}</ul>')
    if searchable:
        parts.append(f'<script type="application/json" id="spix-data">{viewer_data(entries, out, kinds, top)}</script>')
        parts.append(f"<script>{VIEWER_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_gallery(
    out: Path, folder: Path, entries: list[GalleryEntry], errors: list[dict[str, str]], legend: Path | None,
    soft_layers: int,
) -> None:
    """OUT/index.html, with a ground-truth column (and a legend of its classes when there is no label legend)
    when the input folder sits in an ADE-layout data root."""
    entries = add_ground_truth(out, folder, [replace(e, size=picture_size(e)) for e in entries])
    if legend is None and any("truth" in e.files for e in entries):
        names = read_class_names(folder.parent.parent)
        legend = out / TRUTH_FOLDER / "legend.png"
        write_png(legend, legend_picture({i + 1: n for i, n in enumerate(names)}))
    write_text_atomic(out / GALLERY, gallery_html(out, entries, errors, legend, soft_layers))


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
