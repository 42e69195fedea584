"""`spix preprocess`: SLIC superpixels and their statistics for every image, into Parquet shards.

The per-image work is the plain function `preprocess_image` (bytes in, one row out); Ray maps it
over shards, one task per shard. A shard task that crashes (SLIC segfaults on some systems) is redone
image by image in separate tasks, so one bad image costs one skip, never the run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from spix.configs import build, defaults
from spix.pipeline.cluster import node_id
from spix.pipeline.dataset import ADE_NUM_CLASSES, ImageRecord, check_layout, list_split, read_class_names
from spix.pipeline.imageio import (
    BadInputError,
    decode_labels,
    decode_rgb,
    encode_jpeg,
    encode_png,
    needs_rgb_conversion,
    open_image,
    resize_to_max_side,
    to_rgb,
)
from spix.pipeline.shards import (
    MANIFEST,
    PARTIAL_DIR,
    SCHEMA_VERSION,
    ShardFormatError,
    ShardWriter,
    filesystem_and_path,
    read_shard_metadata,
    shard_name,
)
from spix.pipeline.superpixels import compute_superpixels, slic_class, superpixel_stats


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h


JPEG_QUALITY = 95  # for images that had to be re-encoded (resized or converted)
SLIC_IMPLEMENTATION = "fast-slic 0.4.0"


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that changes what a shard holds; stored in every shard and the manifest.

    The first three are settings ([preprocess] in configs/default.toml); the class count comes from the
    data root, the last two are facts of this version of spix.
    """

    num_superpixels: int
    compactness: float
    max_side: int
    num_classes: int = ADE_NUM_CLASSES
    jpeg_quality: int = JPEG_QUALITY
    slic: str = SLIC_IMPLEMENTATION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preprocess_params(**overrides: Any) -> PreprocessParams:
    """The [preprocess] defaults of configs/default.toml with `overrides`."""
    return build(PreprocessParams, {**defaults("preprocess"), **overrides})


@dataclass(frozen=True)
class ShardPlan:
    name: str
    split: str
    records: tuple[ImageRecord, ...]

    @property
    def inputs_digest(self) -> str:
        """Identifies the input list, so a changed dataset is not mistaken for a finished shard."""
        joined = "\n".join(r.image_path for r in self.records)
        return hashlib.sha1(joined.encode()).hexdigest()


@dataclass
class ShardResult:
    name: str
    split: str
    num_rows: int
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    superpixel_counts: list[int] = field(default_factory=list)
    node: str = ""
    seconds: float = 0.0  # the whole task: reading, SLIC and statistics, and writing the shard
    write_seconds: float = 0.0  # of which building and writing Parquet row groups
    reused: bool = False


def superpixel_fields(rgb: np.ndarray, labels: np.ndarray, params: PreprocessParams) -> dict[str, Any]:
    """Decoded arrays in, the superpixel part of a shard row out."""
    superpixels = compute_superpixels(rgb, params.num_superpixels, params.compactness)
    stats = superpixel_stats(superpixels, labels, rgb, params.num_classes + 1)
    return {
        "superpixels": superpixels.astype("<u2", copy=False).tobytes(),
        "num_superpixels": len(stats.area),
        "sp_area": stats.area,
        "sp_label": stats.label,
        "sp_purity": stats.purity,
        "sp_centroid": stats.centroid,
        "sp_mean_rgb": stats.mean_rgb,
    }


def preprocess_image(image_bytes: bytes, label_bytes: bytes, record: ImageRecord, params: PreprocessParams) -> dict[str, Any]:
    """One image and its annotation (encoded bytes) -> one shard row. Raises BadInputError to skip."""
    image = open_image(image_bytes)
    rgb = to_rgb(image)
    labels = decode_labels(label_bytes)
    if labels.shape != rgb.shape[:2]:
        raise BadInputError(
            f"annotation is {labels.shape[1]}x{labels.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}"
        )
    warnings = []
    out_of_range = labels > params.num_classes
    if out_of_range.any():
        warnings.append(f"{int(out_of_range.sum())} label values above {params.num_classes} set to 0")
    relabelled = out_of_range.any() or labels.dtype != np.uint8
    labels = np.where(out_of_range, 0, labels).astype(np.uint8)
    orig_height, orig_width = labels.shape
    rgb, labels = resize_to_max_side(rgb, labels, params.max_side)
    resized = labels.shape != (orig_height, orig_width)
    image_format = (image.format or "png").lower()
    if resized or needs_rgb_conversion(image):
        image_bytes, image_format = encode_jpeg(rgb, params.jpeg_quality), "jpeg"
        rgb = decode_rgb(image_bytes)  # statistics describe exactly the pixels a reader decodes
    if resized or relabelled:
        label_bytes = encode_png(labels)
    return {
        "image_id": record.image_id,
        "split": record.split,
        "source_path": record.image_path,
        "label_path": record.label_path,
        "height": labels.shape[0],
        "width": labels.shape[1],
        "orig_height": orig_height,
        "orig_width": orig_width,
        "image": image_bytes,
        "image_format": image_format,
        "labels": label_bytes,
        "warnings": warnings,
        **superpixel_fields(rgb, labels, params),
    }


def read_input(data_root: str, relative: str, what: str) -> bytes:
    path = Path(data_root) / relative
    if not path.is_file():
        raise BadInputError(f"missing {what} {relative}")
    return path.read_bytes()


def preprocess_record(data_root: str, record: ImageRecord, params: PreprocessParams) -> dict[str, Any]:
    """Read one record's files and preprocess them; every failure becomes BadInputError."""
    image_bytes = read_input(data_root, record.image_path, "image")
    label_bytes = read_input(data_root, record.label_path, "annotation")
    try:
        return preprocess_image(image_bytes, label_bytes, record, params)
    except BadInputError:
        raise
    except Exception as exc:  # an input that breaks a library in an unforeseen way is still only one skip
        raise BadInputError(f"unexpected {type(exc).__name__}: {exc}") from exc


def build_shard(plan: ShardPlan, data_root: str, out_uri: str, params: PreprocessParams) -> ShardResult:
    """Preprocess every image of a shard plan and write the shard atomically (plain function)."""
    start = time.perf_counter()
    keep_freed_memory_in_process()
    slic_class()  # load fast-slic once, before the first image
    writer = ShardWriter(out_uri, plan.name, params.as_dict())
    result = ShardResult(plan.name, plan.split, 0, node=node_id())
    try:
        for record in plan.records:
            try:
                row = preprocess_record(data_root, record, params)
            except BadInputError as exc:
                result.errors.append({"path": record.image_path, "reason": str(exc)})
                continue
            result.warnings.extend({"path": record.image_path, "warning": w} for w in row["warnings"])
            result.superpixel_counts.append(row["num_superpixels"])
            writer.add(row)
        writer.flush()  # so that the seconds below include all of the writing
    except BaseException:
        writer.abort()
        raise
    result.seconds = time.perf_counter() - start
    result.write_seconds = writer.write_seconds
    result.num_rows = len(result.superpixel_counts)
    writer.commit(shard_extra_metadata(plan, result))
    return result


def write_rows_as_shard(plan: ShardPlan, rows: list[dict[str, Any]], result: ShardResult, out_uri: str, params: PreprocessParams) -> None:
    """Write rows computed elsewhere (the crash-isolation path) as one shard."""
    writer = ShardWriter(out_uri, plan.name, params.as_dict())
    for row in rows:
        writer.add(row)
    writer.commit(shard_extra_metadata(plan, result))


def shard_extra_metadata(plan: ShardPlan, result: ShardResult) -> dict[str, Any]:
    return {
        "split": plan.split,
        "inputs_digest": plan.inputs_digest,
        "errors": result.errors,
        "warnings": result.warnings,
        "superpixel_counts": result.superpixel_counts,
        "node": result.node,
        "seconds": result.seconds,
        "write_seconds": result.write_seconds,
    }


def plan_shards(data_root: Path, splits: tuple[str, ...], images_per_shard: int) -> list[ShardPlan]:
    """Split every split's sorted image list into consecutive shards (stable across re-runs)."""
    plans = []
    for split in splits:
        records = list_split(data_root, split)
        for index, start in enumerate(range(0, len(records), images_per_shard)):
            plans.append(ShardPlan(shard_name(split, index), split, tuple(records[start : start + images_per_shard])))
    return plans


def finished_shard(fs: pafs.FileSystem, out: str, plan: ShardPlan, params: PreprocessParams) -> ShardResult | None:
    """The result stored in an existing shard that this run would write identically, else None."""
    path = posixpath.join(out, plan.name)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    meta = read_shard_metadata(fs, path)
    if meta.get("schema_version") != SCHEMA_VERSION or meta.get("params") != params.as_dict():
        raise ShardFormatError(
            f"{path} was written with other parameters or schema; use --overwrite to rebuild, or another --out"
        )
    if meta.get("inputs_digest") != plan.inputs_digest:
        return None
    return ShardResult(
        plan.name, plan.split, meta["num_rows"], meta["errors"], meta["warnings"],
        meta["superpixel_counts"], meta["node"], meta["seconds"], meta.get("write_seconds", 0.0), reused=True,
    )


def prepare_output(out_uri: str, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """Create the output folder; with overwrite, remove what an earlier run left; always drop partial files."""
    fs, out = filesystem_and_path(out_uri)
    if overwrite and fs.get_file_info(out).type == pafs.FileType.Directory:
        for info in fs.get_file_info(pafs.FileSelector(out)):
            if info.base_name.endswith(".parquet") or info.base_name in (MANIFEST, PARTIAL_DIR):
                (fs.delete_dir if info.type == pafs.FileType.Directory else fs.delete_file)(info.path)
    fs.create_dir(out, recursive=True)
    partial = posixpath.join(out, PARTIAL_DIR)
    if fs.get_file_info(partial).type == pafs.FileType.Directory:
        fs.delete_dir(partial)
    return fs, out


def remove_stale_shards(fs: pafs.FileSystem, out: str, splits: tuple[str, ...], plans: list[ShardPlan]) -> None:
    """Delete the shard files of this run's splits that its plan no longer names (the input list shrank, or
    --images-per-shard grew), so that a reader of the folder's *.parquet files (pyarrow, DuckDB, Polars)
    never sees a removed image, or one image twice."""
    planned = {plan.name for plan in plans}
    pattern = re.compile("(?:" + "|".join(re.escape(split) for split in splits) + r")-\d{5,}\.parquet")
    for info in fs.get_file_info(pafs.FileSelector(out)):
        if info.type == pafs.FileType.File and pattern.fullmatch(info.base_name) and info.base_name not in planned:
            fs.delete_file(info.path)


def keep_freed_memory_in_process() -> None:
    """Reuse freed memory instead of handing it back to the OS and faulting it in again for the next image.

    By default glibc mmaps every allocation above 128 KiB, and Arrow's mimalloc returns freed pages after
    ~10 ms, so each image's arrays and each row group's buffers arrive as fresh pages. Measured here:
    ~20% of the per-image time in Ray workers (glibc), and a first row group written at 3-5x the cost
    of later ones (mimalloc). glibc is told to keep large blocks on its heap (up to 256 MiB kept free),
    and Arrow allocates through it. Does nothing where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)
    except (OSError, AttributeError):
        return
    pa.set_memory_pool(pa.system_memory_pool())


def exercise_once() -> str:
    """Warm-up task: run the per-image path and the Parquet encoder once on an ADE-sized synthetic image,
    then stay a moment so that concurrent warm-ups need distinct workers.

    It loads fast-slic, the codecs and Arrow's lazy parts, and a node without a working fast-slic
    fails here, before any work is handed out.
    """
    import io

    import pyarrow.parquet as pq

    from spix.pipeline.shards import SHARD_WRITE_OPTIONS, rows_to_table

    keep_freed_memory_in_process()
    noise = np.random.default_rng(0).integers(0, 256, (512, 683, 3), dtype=np.uint8)
    row = preprocess_image(
        encode_png(noise), encode_png(noise[:, :, 0] % 2), ImageRecord("warm-up", "training", "", ""), preprocess_params()
    )
    pq.write_table(rows_to_table([row]), io.BytesIO(), **SHARD_WRITE_OPTIONS)
    time.sleep(0.5)
    return slic_class().__name__


def warm_up_workers() -> None:
    """Start one worker per CPU with fast-slic loaded, so that start-up is not charged to the first shards
    and a node without a working fast-slic fails here, before any work is handed out."""
    import ray

    task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(exercise_once)
    ray.get([task.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))])


def run_shards_on_ray(
    plans: list[ShardPlan], data_root: str, out_uri: str, params: PreprocessParams, on_progress: Callable[[int], None]
) -> list[ShardResult]:
    """One Ray task per shard, spread over the nodes; shards whose task crashed are redone image by image."""
    import ray

    shard_task = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(build_shard)
    # Largest shards first (a split's short last shard goes at the end), so the workers finish together.
    by_size = sorted(plans, key=lambda plan: len(plan.records), reverse=True)
    pending = {shard_task.remote(plan, data_root, out_uri, params): plan for plan in by_size}
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        plan = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except (ray.exceptions.RayError, OSError) as exc:
            result = rebuild_shard_isolated(plan, data_root, out_uri, params, exc)
        results.append(result)
        on_progress(len(plan.records))
    return results


def rebuild_shard_isolated(plan: ShardPlan, data_root: str, out_uri: str, params: PreprocessParams, cause: Exception) -> ShardResult:
    """Redo a crashed shard with one task per image, so a crash loses only the image that caused it."""
    import ray

    image_task = ray.remote(num_cpus=1, max_retries=0)(preprocess_record)
    refs = [image_task.remote(data_root, record, params) for record in plan.records]
    result = ShardResult(plan.name, plan.split, 0, node=node_id())
    rows = []
    for record, ref in zip(plan.records, refs):
        try:
            row = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            reason = str(exc.cause) if isinstance(exc.cause, BadInputError) else f"worker error: {exc.cause!r}"
            result.errors.append({"path": record.image_path, "reason": reason})
            continue
        except ray.exceptions.RayError as exc:
            result.errors.append({"path": record.image_path, "reason": f"worker crashed ({type(exc).__name__})"})
            continue
        rows.append(row)
        result.warnings.extend({"path": record.image_path, "warning": w} for w in row["warnings"])
        result.superpixel_counts.append(row["num_superpixels"])
    result.num_rows = len(rows)
    write_rows_as_shard(plan, rows, result, out_uri, params)
    return result


def build_manifest(plans: list[ShardPlan], results: list[ShardResult], params: PreprocessParams, timings: dict[str, float]) -> dict[str, Any]:
    by_name = {r.name: r for r in results}
    splits: dict[str, dict[str, Any]] = {}
    for plan in plans:
        entry = splits.setdefault(plan.split, {"images": 0, "inputs": 0, "shards": []})
        entry["images"] += by_name[plan.name].num_rows
        entry["inputs"] += len(plan.records)
        entry["shards"].append(plan.name)
    counts = [c for r in results for c in r.superpixel_counts]
    return {
        "schema_version": SCHEMA_VERSION,
        "params": params.as_dict(),
        "splits": splits,
        "images": sum(r.num_rows for r in results),
        "superpixels_per_image": {
            "mean": float(np.mean(counts)) if counts else 0.0,
            "min": int(min(counts, default=0)),
            "max": int(max(counts, default=0)),
        },
        "errors": [{**e, "shard": p.name} for p in plans for e in by_name[p.name].errors],
        "warnings": [{**w, "shard": p.name} for p in plans for w in by_name[p.name].warnings],
        "nodes": sorted({r.node for r in results if not r.reused}),
        "shards_reused": sum(r.reused for r in results),
        "timings": timings,
    }


def write_manifest(fs: pafs.FileSystem, out: str, manifest: dict[str, Any]) -> None:
    tmp = posixpath.join(out, PARTIAL_DIR, MANIFEST)
    fs.create_dir(posixpath.dirname(tmp), recursive=True)
    with fs.open_output_stream(tmp) as handle:
        handle.write(json.dumps(manifest, indent=1).encode())
    fs.move(tmp, posixpath.join(out, MANIFEST))
    fs.delete_dir(posixpath.join(out, PARTIAL_DIR))


def run_preprocess(
    data_root: Path,
    out_uri: str,
    splits: tuple[str, ...],
    params: PreprocessParams,
    images_per_shard: int,
    num_cpus: int = 0,
    address: str = "",
    overwrite: bool = False,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """The whole job: plan, skip finished shards, run the rest on Ray, write the manifest."""
    from spix.pipeline.cluster import init_ray

    start = time.perf_counter()
    check_layout(data_root, splits)
    data_root = data_root.resolve()  # Ray workers do not share the driver's working directory
    out_uri = out_uri if "://" in out_uri else str(Path(out_uri).resolve())
    class_names = read_class_names(data_root)
    params = PreprocessParams(**{**params.as_dict(), "num_classes": len(class_names)})
    plans = plan_shards(data_root, splits, images_per_shard)
    fs, out = prepare_output(out_uri, overwrite)
    done = {p.name: r for p in plans if (r := finished_shard(fs, out, p, params)) is not None}
    todo = [p for p in plans if p.name not in done]
    on_start(sum(len(p.records) for p in todo))
    ray_start = time.perf_counter()
    if todo:
        init_ray(address, num_cpus)
        warm_up_workers()
    work_start = time.perf_counter()
    results = list(done.values()) + run_shards_on_ray(todo, str(data_root), out_uri, params, on_progress)
    end = time.perf_counter()
    processed = sum(len(p.records) for p in todo)
    worked = [r for r in results if not r.reused]
    timings = {
        "total_s": end - start,
        "ray_init_s": work_start - ray_start,  # Ray and its worker processes starting
        "process_s": end - work_start,
        "inputs_processed": processed,
        "images_per_s": processed / (end - work_start) if processed else 0.0,
        "shard_tasks_s": sum(r.seconds for r in worked),  # summed over workers: busy time
        "parquet_write_s": sum(r.write_seconds for r in worked),
    }
    manifest = {**build_manifest(plans, results, params, timings), "class_names": class_names}
    remove_stale_shards(fs, out, splits, plans)
    write_manifest(fs, out, manifest)
    return manifest
