"""`spix infer`: embeddings, feature pictures and soft segmentations for a folder of images, on Ray Data.

Plain functions do the work of one image: `decode_input` (read, decode upright, shrink) and SLIC,
`embed_images` (the model on a batch, pooling, principal components) and `finish_image` (pictures,
soft layers, label map, files). Ray Data streams them: CPU tasks read and segment, an actor pool
holds the model (loaded once per actor; one GPU each when there is a GPU), CPU tasks post-process
and write. The driver sees one small status row per image: progress, errors.jsonl, the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from spix.pipeline.dataset import IMAGE_EXTENSIONS, is_image_name
from spix.pipeline.gallery import GalleryEntry, gallery_html, legend_picture
from spix.pipeline.imageio import BadInputError, decode_rgb_oriented, shrink_to_max_side
from spix.pipeline.postprocess import (
    FEATURE_EPS,
    LAYER_EPS,
    dense_principal_components,
    distinct_colours,
    feature_picture,
    label_palette,
    layer_composite,
    smoothing_radius,
    soft_layers,
)
from spix.pipeline.superpixels import compute_superpixels
from spix.trainer.checkpoint import find_model_files, load_model, newest_finished_run
from spix.trainer.metrics import LinearProbe, paint_superpixels
from spix.trainer.model import autocast, normalize_images
from spix.trainer.pooling import superpixel_pool

RUN_RECORD = "infer.json"
ERRORS_FILE = "errors.jsonl"
GALLERY = "index.html"
LEGEND = "labels/legend.png"
MAX_NAME_BYTES = 200  # output names stay well below the usual 255-byte file name limit
# Ray Data loggers that only announce start and finish (the "ray.data" logger itself is reset by Ray
# at every execution; block errors come from another logger and stay visible).
RAY_DATA_CHATTER = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")
TASK_RETRIES = 2  # Ray Data retries crashed tasks and actor calls forever by default: a crashing image would hang the run


class InferInputError(ValueError):
    """A problem with the command's inputs (folder, checkpoint, classifier, output folder): one line to the user."""


@dataclass(frozen=True)
class InferParams:
    """Everything that changes what the outputs hold; recorded in OUT/infer.json and checked on re-runs."""

    model_sha1: str
    num_superpixels: int
    compactness: float
    max_side: int = 1024
    soft_layers: int = 5
    smooth_radius: int = 0  # guided-filter radius in pixels; 0 = about 1/64 of the longer side
    feature_eps: float = FEATURE_EPS
    layer_eps: float = LAYER_EPS
    seed: int = 0


@dataclass(frozen=True)
class InferOptions:
    """How to run, and which optional outputs to add; does not change the common outputs."""

    checkpoint: str  # the model.pt every actor loads
    dense: bool = False  # also OUT/dense/<name>.npy, (H, W, D) float16
    classifier: str = ""  # the linear probe (.npz) used for OUT/labels/<name>.png, for the record
    batch_size: int = 4
    gpu: bool | None = None  # None: GPU actors when Ray sees a GPU
    address: str = ""
    num_cpus: int = 0
    overwrite: bool = False


# ----------------------------------------------------------------------------- inputs, names, outputs


def default_out(folder: Path) -> Path:
    """FOLDER_spix next to FOLDER: outside the folder, so a re-run never reads its own outputs."""
    folder = folder.resolve()
    if folder.parent == folder:
        raise InferInputError(f"{folder} has no parent folder for the default output; pass --out")
    return folder.parent / f"{folder.name}_spix"


def list_inputs(folder: Path, out: Path) -> tuple[list[str], int]:
    """Sorted '/'-separated paths (relative to `folder`) of every image file below it, and the count of other files.

    The output folder is never searched, even when it lies inside `folder`.
    """
    images, others = [], 0
    out = out.resolve()
    for directory, subdirs, files in os.walk(folder):
        here = Path(directory)
        subdirs[:] = [d for d in subdirs if (here / d).resolve() != out]
        for file in files:
            if is_image_name(file):
                images.append((here / file).relative_to(folder).as_posix())
            else:
                others += 1
    return sorted(images), others


def with_digest(name: str, relpath: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` with a short hash of `relpath` before its extension, the stem shortened to fit `max_bytes`."""
    stem, ext = os.path.splitext(name)
    tag = "~" + hashlib.sha1(relpath.encode()).hexdigest()[:10] + ext
    room = max_bytes - len(tag.encode())
    return stem.encode()[:room].decode(errors="ignore") + tag


def output_names(relpaths: list[str]) -> dict[str, str]:
    """A unique, flat file name per input: the relative path with '/' -> '__', extension kept.

    Names that would clash (a/b.jpg vs a__b.jpg) or run too long get a hash of their path; the
    top-level file of a clash keeps the plain name. Names never contain '/', so outputs stay in OUT.
    """
    flat = {r: r.replace("/", "__") for r in relpaths}
    counts = Counter(flat.values())
    names = {}
    for relpath, name in flat.items():
        clash = counts[name] > 1 and "/" in relpath
        names[relpath] = with_digest(name, relpath) if clash or len(name.encode()) > MAX_NAME_BYTES else name
    return names


def output_files(out: Path, name: str, dense: bool = False, labels: bool = False) -> dict[str, Path]:
    """Every file written for one input, by kind."""
    files = {
        "input": out / "inputs" / f"{name}.jpg",  # the image as processed (upright, shrunk), for the gallery
        "features": out / "features" / f"{name}.png",
        "soft": out / "soft" / f"{name}.png",
        "layers": out / "soft" / f"{name}.npz",
        "embeddings": out / "embeddings" / f"{name}.parquet",
    }
    if dense:
        files["dense"] = out / "dense" / f"{name}.npy"
    if labels:
        files["labels"] = out / "labels" / f"{name}.png"
    return files


def is_done(out: Path, name: str, dense: bool, labels: bool) -> bool:
    return all(path.is_file() for path in output_files(out, name, dense, labels).values())


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary name in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.partial-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_partial_files(out: Path) -> None:
    """Temporary files left by a run that was killed mid-write."""
    for partial in out.glob("*/*.partial-*"):
        partial.unlink(missing_ok=True)


def write_png(path: Path, image: Image.Image) -> None:
    write_atomic(path, lambda handle: image.save(handle, format="PNG", compress_level=1))  # fast; sizes stay modest


# ----------------------------------------------------------------------------- checkpoint and classifier


def resolve_checkpoint(checkpoint: str, runs_dir: Path = Path("runs")) -> tuple[Path, dict[str, Any]]:
    """(model.pt, metadata) of a run folder or model.pt, default the newest finished run; loads once to check it."""
    run_or_file = Path(checkpoint) if checkpoint else newest_finished_run(runs_dir)
    weights, _ = find_model_files(run_or_file)
    _, meta = load_model(weights, "cpu")
    return weights.resolve(), meta


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_classifier(weights: Path) -> Path:
    """The newest classifier.npz inside the model's run folder (where `spix eval` reports go)."""
    found = sorted(weights.parent.rglob("classifier.npz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InferInputError(f"no classifier.npz under {weights.parent}; run `spix eval` or pass --classifier")
    return found[-1]


def load_classifier(path: Path, meta: dict[str, Any]) -> tuple[LinearProbe, dict[int, str]]:
    """The linear probe and its class names; it must fit the model's embedding size and give ids 0..255."""
    try:
        probe = LinearProbe.load(path)
    except ValueError as exc:
        raise InferInputError(str(exc)) from None
    if probe.coef_.shape[1] != meta["dim"]:
        raise InferInputError(f"{path} expects {probe.coef_.shape[1]}-D features but the model gives {meta['dim']}-D")
    classes = probe.classes_
    if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() > 255:
        raise InferInputError(f"{path}: class ids must be integers in 0..255 for a label map PNG")
    meta_names = {i + 1: n for i, n in enumerate(meta.get("class_names", []))}
    names = {int(c): probe.class_names.get(int(c)) or meta_names.get(int(c), f"class {c}") for c in classes}
    return probe, names


# ----------------------------------------------------------------------------- the work of one image


def decode_input(path: str, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read and decode one file, upright and shrunk to `max_side`; any way it can be broken is BadInputError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        rgb = decode_rgb_oriented(data)
    except BadInputError:
        raise
    except Exception as exc:  # a decoder failing in an unforeseen way still only costs this file
        raise BadInputError(f"unexpected {type(exc).__name__}: {exc}") from exc
    return shrink_to_max_side(rgb, max_side), rgb.shape[:2]


@dataclass
class Embedded:
    """What the model stage hands on for one image."""

    embeddings: np.ndarray  # (S, D) float32 superpixel means
    components: np.ndarray  # (H, W, 3) float32 projections on the dense map's principal components
    dense: np.ndarray | None = None  # (H, W, D) float16 when asked for


def summarise_features(features: torch.Tensor, superpixels: np.ndarray, keep_dense: bool) -> Embedded:
    """One image's dense features (D, H, W) -> superpixel embeddings and principal components."""
    ids = torch.from_numpy(superpixels.astype(np.int64)).to(features.device)
    pooled, _ = superpixel_pool(features[None], ids[None], int(superpixels.max()) + 1)
    return Embedded(
        embeddings=pooled[0].cpu().numpy(),
        components=dense_principal_components(features).cpu().numpy(),
        dense=features.permute(1, 2, 0).half().cpu().numpy() if keep_dense else None,
    )


@torch.no_grad()
def embed_images(
    model: torch.nn.Module, images: list[np.ndarray], superpixels: list[np.ndarray], device: torch.device,
    amp: bool = False, keep_dense: bool = False, max_stack: int | None = None,
) -> list[Embedded]:
    """The inference step: images of one size go through the model together, each exactly as alone.

    Same-size images are stacked, at most `max_stack` per forward pass (no padding, which would change
    the features near the borders and make them depend on the batch); then each image is pooled and
    projected on its own.
    """
    model.eval()
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, rgb in enumerate(images):
        by_size[rgb.shape].append(index)
    stack = max_stack or len(images)
    results: list[Embedded | None] = [None] * len(images)
    for group in by_size.values():
        for first in range(0, len(group), stack):
            indices = group[first : first + stack]
            batch = torch.from_numpy(np.stack([images[i] for i in indices])).to(device)
            with autocast(device, amp):
                features = model(normalize_images(batch))
            for image_features, index in zip(features.float(), indices):
                results[index] = summarise_features(image_features, superpixels[index], keep_dense)
    return results


def finish_image(
    out: Path, name: str, relpath: str, rgb: np.ndarray, superpixels: np.ndarray, embedded: Embedded,
    params: InferParams, probe: LinearProbe | None = None, orig_size: tuple[int, int] | None = None,
) -> None:
    """Post-process one embedded image and write its files, each atomically (an image is done when all exist)."""
    height, width = superpixels.shape
    files = output_files(out, name, labels=probe is not None)
    radius = params.smooth_radius or smoothing_radius(height, width)
    picture = feature_picture(embedded.components, rgb, radius, params.feature_eps)
    layers = soft_layers(embedded.embeddings, superpixels, rgb, params.soft_layers, radius, params.layer_eps, params.seed)
    colours = distinct_colours(params.soft_layers)
    write_png(files["features"], Image.fromarray(picture))
    write_png(files["soft"], Image.fromarray(layer_composite(layers, colours)))
    write_atomic(files["layers"], lambda handle: np.savez_compressed(handle, layers=layers, colours=colours))
    write_atomic(files["input"], lambda handle: Image.fromarray(rgb).save(handle, format="JPEG", quality=90))
    if probe is not None:
        write_png(files["labels"], label_map_image(superpixels, probe.predict(embedded.embeddings)))
    table = embeddings_table(relpath, superpixels, embedded.embeddings, orig_size or (height, width))
    write_atomic(files["embeddings"], lambda handle: pq.write_table(table, handle, compression="zstd"))


def label_map_image(superpixels: np.ndarray, superpixel_classes: np.ndarray) -> Image.Image:
    """A palette PNG: pixel values are class ids (read back with numpy), the palette shows them in colour."""
    image = Image.fromarray(paint_superpixels(superpixels, superpixel_classes.astype(np.uint8)))
    image.putpalette(label_palette().ravel().tolist())  # turns the L image into a P image
    return image


def embeddings_table(relpath: str, superpixels: np.ndarray, embeddings: np.ndarray, orig_size: tuple[int, int]) -> pa.Table:
    """One row: path, sizes, superpixel map (uint16) and S x D float16 embeddings (raw little-endian bytes)."""
    height, width = superpixels.shape
    return pa.table({
        "relative_path": [relpath],
        "height": pa.array([height], pa.int32()),
        "width": pa.array([width], pa.int32()),
        "orig_height": pa.array([orig_size[0]], pa.int32()),
        "orig_width": pa.array([orig_size[1]], pa.int32()),
        "num_superpixels": pa.array([embeddings.shape[0]], pa.int32()),
        "dim": pa.array([embeddings.shape[1]], pa.int32()),
        "superpixels": pa.array([superpixels.astype("<u2").tobytes()], pa.binary()),
        "embeddings": pa.array([embeddings.astype("<f2").tobytes()], pa.binary()),
    })


def read_embeddings(path: Path) -> dict[str, Any]:
    """One OUT/embeddings/*.parquet row back as arrays: superpixels (H, W) uint16, embeddings (S, D) float16."""
    row = pq.read_table(path).to_pylist()[0]
    row["superpixels"] = np.frombuffer(row["superpixels"], "<u2").reshape(row["height"], row["width"])
    row["embeddings"] = np.frombuffer(row["embeddings"], "<f2").reshape(row["num_superpixels"], row["dim"])
    return row


# ----------------------------------------------------------------------------- Ray Data stages


def current_node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def status_row(item: dict[str, Any], status: str = "ok", reason: str = "") -> dict[str, Any]:
    """The fixed set of columns every row carries between stages (bytes empty until filled)."""
    return {
        "relpath": item["relpath"], "name": item["name"], "path": item["path"], "status": status, "reason": reason,
        "height": 0, "width": 0, "orig_height": 0, "orig_width": 0, "rgb": b"", "superpixels": b"",
        "num_superpixels": 0, "embeddings": b"", "components": b"", "dim": 0, "nodes": current_node(),
    }


def prepare_row(item: dict[str, Any], params: InferParams) -> dict[str, Any]:
    """Stage 1 (CPU task): read, decode, shrink, SLIC. A broken input becomes a 'skipped' row."""
    row = status_row(item)
    try:
        rgb, (orig_height, orig_width) = decode_input(item["path"], params.max_side)
    except BadInputError as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    try:
        superpixels = compute_superpixels(rgb, params.num_superpixels, params.compactness)
    except Exception as exc:
        return {**row, "status": "failed", "reason": f"superpixels: {type(exc).__name__}: {exc}"}
    height, width = superpixels.shape
    return {
        **row, "height": height, "width": width, "orig_height": orig_height, "orig_width": orig_width,
        "rgb": rgb.tobytes(), "superpixels": superpixels.tobytes(), "num_superpixels": int(superpixels.max()) + 1,
    }


def row_arrays(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, superpixels) of a prepared row."""
    shape = (int(row["height"]), int(row["width"]))
    rgb = np.frombuffer(row["rgb"], np.uint8).reshape(*shape, 3)
    return rgb, np.frombuffer(row["superpixels"], np.uint16).reshape(shape)


class ModelStage:
    """Stage 2 (actor pool): loads the model once, then embeds batches of prepared rows."""

    def __init__(self, checkpoint: str, device: str, threads: int, out: str, dense: bool):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model, _ = load_model(Path(checkpoint), self.device)
        self.amp = self.device.type == "cuda"
        # Stacking helps a GPU; on CPUs it only multiplies memory (about 4-5 GB per megapixel for the paper model).
        self.max_stack = None if self.amp else 1
        self.out, self.dense = Path(out), dense
        self.node = current_node()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [{key: batch[key][i] for key in batch} for i in range(len(batch["relpath"]))]
        ready = [row for row in rows if row["status"] == "ok"]
        for row, result in zip(ready, self.embed_rows(ready)):
            if isinstance(result, str):
                row.update(status="failed", reason=result)
                continue
            row.update(
                embeddings=result.embeddings.tobytes(), components=result.components.tobytes(), dim=result.embeddings.shape[1]
            )
            if result.dense is not None:
                dense_path = output_files(self.out, row["name"], dense=True)["dense"]
                write_atomic(dense_path, lambda handle: np.save(handle, result.dense))
        for row in rows:
            row["nodes"] = f"{row['nodes']},{self.node}"
        return {key: [row[key] for row in rows] for key in batch}

    def embed_rows(self, rows: list[dict[str, Any]]) -> list[Embedded | str]:
        """The whole batch at once; if that fails (e.g. out of memory), image by image, failures as messages."""
        try:
            return self.embed(rows)
        except Exception:
            return [self.embed_or_message(row) for row in rows]

    def embed(self, rows: list[dict[str, Any]]) -> list[Embedded]:
        arrays = [row_arrays(row) for row in rows]
        return embed_images(
            self.model, [a[0] for a in arrays], [a[1] for a in arrays], self.device, self.amp, self.dense, self.max_stack
        )

    def embed_or_message(self, row: dict[str, Any]) -> Embedded | str:
        try:
            return self.embed([row])[0]
        except Exception as exc:
            return f"model: {type(exc).__name__}: {exc}"


def finish_row(row: dict[str, Any], out: str, params: InferParams, probe: LinearProbe | None) -> dict[str, Any]:
    """Stage 3 (CPU task): pictures, soft layers, files. Returns the small status row the driver keeps."""
    status, reason = str(row["status"]), str(row["reason"])
    if status == "ok":
        try:
            rgb, superpixels = row_arrays(row)
            embedded = Embedded(
                np.frombuffer(row["embeddings"], np.float32).reshape(int(row["num_superpixels"]), int(row["dim"])),
                np.frombuffer(row["components"], np.float32).reshape(int(row["height"]), int(row["width"]), -1),
            )
            finish_image(Path(out), str(row["name"]), str(row["relpath"]), rgb, superpixels, embedded, params, probe,
                         (int(row["orig_height"]), int(row["orig_width"])))
        except Exception as exc:
            status, reason = "failed", f"post-processing: {type(exc).__name__}: {exc}"
    return {"relpath": str(row["relpath"]), "status": status, "reason": reason, "nodes": f"{row['nodes']},{current_node()}"}


def actor_layout(cpus: float, gpus: float, use_gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor).

    One actor per GPU. On CPUs, actors of up to 4 torch threads, always leaving one CPU (or half of a
    lone CPU) to the decode and post-processing tasks, which would otherwise never run.
    """
    if use_gpu:
        return max(1, int(gpus)), 1.0, 1.0
    if cpus < 2:
        return 1, cpus / 2, 0.0
    threads = min(4, int(cpus) - 1)
    return max(1, (int(cpus) - 1) // threads), float(threads), 0.0


def model_threads(cpus: float, actors: int, actor_cpus: float, use_gpu: bool) -> int:
    """torch threads of a model actor: on CPUs the actors share every core, the ones Ray keeps for the
    decode and post-processing tasks included (those are light beside the forward pass and interleave)."""
    if use_gpu:
        return max(1, int(actor_cpus))
    return max(1, int(cpus) // actors)


def run_pipeline(
    items: list[dict[str, str]], out: Path, params: InferParams, options: InferOptions, probe: LinearProbe | None,
    on_progress: Callable[[int], None],
) -> list[dict[str, Any]]:
    """Stream every item through the three stages; returns one status row per image that came back."""
    import ray
    from ray.util.annotations import RayDeprecationWarning

    for chatter in RAY_DATA_CHATTER:
        logging.getLogger(chatter).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command draws its own bar
    context.print_on_execution_start = False
    context.max_errored_blocks = -1  # a crashed worker costs its images (reported as lost), not the run
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    use_gpu = gpus > 0 if options.gpu is None else options.gpu
    if use_gpu and not gpus:
        raise InferInputError("--gpu: Ray sees no GPU")
    actors, actor_cpus, actor_gpus = actor_layout(resources.get("CPU", 1), gpus, use_gpu)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one image per block: a crash costs one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)  # the retry limits have no named parameter in Ray 2.60
        dataset = dataset.map(prepare_row, fn_kwargs={"params": params}, num_cpus=1, max_retries=TASK_RETRIES)
        dataset = dataset.map_batches(
            ModelStage,
            fn_constructor_kwargs={
                "checkpoint": options.checkpoint, "device": "cuda" if use_gpu else "cpu",
                "threads": model_threads(resources.get("CPU", 1), actors, actor_cpus, use_gpu),
                "out": str(out), "dense": options.dense,
            },
            batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus, num_gpus=actor_gpus, max_task_retries=TASK_RETRIES,
        )
        dataset = dataset.map(
            finish_row, fn_kwargs={"out": str(out), "params": params, "probe": probe}, num_cpus=1, max_retries=TASK_RETRIES
        )
    results = []
    for row in dataset.iter_rows():
        results.append(row)
        on_progress(1)
    return results


# ----------------------------------------------------------------------------- the whole command


@dataclass
class InferSummary:
    """Counts and timings of one run; `errors` holds this run's skipped and failed inputs."""

    inputs: int
    already_done: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    ignored_files: int = 0
    seconds: float = 0.0
    ray_start_s: float = 0.0
    nodes: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def check_previous_run(out: Path, params: InferParams, overwrite: bool) -> None:
    """Refuse to add outputs made with other parameters to an output folder (unless --overwrite)."""
    record = out / RUN_RECORD
    if overwrite or not record.is_file():
        return
    try:
        previous = json.loads(record.read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    changed = sorted(k for k, v in asdict(params).items() if previous.get(k) != v)
    if changed:
        raise InferInputError(
            f"{out} holds outputs made with other settings ({', '.join(changed)}); "
            "pass --overwrite to redo them, or choose another --out"
        )


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def write_errors(out: Path, errors: list[dict[str, str]]) -> None:
    write_text_atomic(out / ERRORS_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))


def collect_results(todo: list[str], results: list[dict[str, Any]], summary: InferSummary) -> None:
    """Count the status rows; an image with no row at all was lost with a crashed worker."""
    by_path = {row["relpath"]: row for row in results}
    nodes = set()
    for relpath in todo:
        row = by_path.get(relpath)
        if row is None:
            row = {"status": "failed", "reason": "lost: the worker processing it crashed (see the Ray logs)", "nodes": ""}
        nodes.update(n for n in row["nodes"].split(",") if n)
        if row["status"] == "ok":
            summary.done += 1
            continue
        summary.skipped += row["status"] == "skipped"
        summary.failed += row["status"] != "skipped"
        summary.errors.append({"path": relpath, "status": row["status"], "reason": row["reason"]})
    summary.nodes = sorted(nodes)


def run_infer(
    folder: Path, out: Path, params: InferParams, options: InferOptions,
    probe: LinearProbe | None = None, class_names: dict[int, str] | None = None,
    on_start: Callable[[int], None] = lambda total: None, on_progress: Callable[[int], None] = lambda n: None,
) -> InferSummary:
    """The whole job: list inputs, skip finished ones, stream the rest through Ray, write errors, record, gallery."""
    from spix.pipeline.cluster import init_ray

    start = time.perf_counter()
    folder, out = folder.resolve(), out.resolve()
    if not folder.is_dir():
        raise InferInputError(f"{folder} is not a folder")
    relpaths, ignored = list_inputs(folder, out)
    if not relpaths:
        raise InferInputError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {folder} or below")
    if out == folder:
        raise InferInputError("--out must not be the input folder itself (a re-run would read the outputs)")
    check_previous_run(out, params, options.overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferInputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    remove_partial_files(out)
    names = output_names(relpaths)
    labels = probe is not None
    todo = [r for r in relpaths if options.overwrite or not is_done(out, names[r], options.dense, labels)]
    summary = InferSummary(inputs=len(relpaths), already_done=len(relpaths) - len(todo), ignored_files=ignored)
    on_start(len(todo))
    if todo:
        ray_start = time.perf_counter()
        init_ray(options.address, options.num_cpus)
        summary.ray_start_s = time.perf_counter() - ray_start
        items = [{"relpath": r, "name": names[r], "path": str(folder / r)} for r in todo]
        collect_results(todo, run_pipeline(items, out, params, options, probe, on_progress), summary)
    summary.seconds = time.perf_counter() - start
    write_errors(out, summary.errors)
    if labels:
        write_png(out / LEGEND, legend_picture(class_names or {int(c): f"class {c}" for c in probe.classes_}))
    record = {"params": asdict(params), "checkpoint": options.checkpoint, "classifier": options.classifier,
              "summary": {**asdict(summary), "errors": len(summary.errors), "images_per_s": summary.images_per_s}}
    write_text_atomic(out / RUN_RECORD, json.dumps(record, indent=1, ensure_ascii=False))
    entries = [
        GalleryEntry(r, folder / r, output_files(out, names[r], options.dense, labels))
        for r in relpaths if is_done(out, names[r], options.dense, labels)
    ]
    write_text_atomic(out / GALLERY, gallery_html(out, entries, summary.errors, out / LEGEND if labels else None))
    return summary
