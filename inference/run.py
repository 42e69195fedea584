"""`spix infer` from start to end: what needs doing, the run-wide basis, the Ray job, the run record, the gallery.

Re-runs: an image whose files (of the kinds asked for) all exist is done and skipped. An input that an
earlier run found unusable (unreadable, empty, not an image: "skipped" in errors.jsonl) is tried again only
when the file changed since (size or modification time) or with --overwrite: retrying it would give the same
answer, and starting Ray for that is what a re-run must not do. Inputs that failed in processing ("failed":
a crashed worker, an error in the model or in writing) are retried, as their cause may have passed. When
nothing is left, Ray and the model are not started at all.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spix.inference.basis import FeatureBasis
from spix.inference.gallery import GalleryEntry, legend_picture, write_gallery
from spix.inference.inputs import file_stamp, list_inputs
from spix.inference.job import STAGE_TIMES, embed_rows, run_job
from spix.inference.outputs import is_done, output_files, output_names, write_png
from spix.inference.settings import InferInputError, InferOptions, InferParams
from spix.inference.step import step_config
from spix.pipeline.dataset import IMAGE_EXTENSIONS
from spix.pipeline.files import remove_partial_files, write_text_atomic
from spix.pipeline.quiet import ray_quieted
from spix.trainer.embedding import EmbeddingMoments
from spix.trainer.probe import LinearProbe

RUN_RECORD = "infer.json"
ERRORS_FILE = "errors.jsonl"
LEGEND = "labels/legend.png"
LOST = "lost: the worker processing it crashed (see the Ray logs)"


@dataclass
class InferSummary:
    """Counts and timings of one run; `errors` holds this run's skipped and failed inputs (errors.jsonl also
    keeps the unusable files of earlier runs that were not retried)."""

    inputs: int
    already_done: int = 0
    broken_before: int = 0  # unusable in an earlier run and unchanged since: not retried
    done: int = 0
    skipped: int = 0
    failed: int = 0
    ignored_files: int = 0
    seconds: float = 0.0
    ray_started: bool = False
    ray_start_s: float = 0.0
    basis_s: float = 0.0  # fitting the run-wide basis on the first images, when the model brings none
    model_ready_s: float = 0.0  # from the job's start until the first model actor had loaded the model (process, imports, CUDA)
    images_per_s_after_ready: float = 0.0  # the job's pace after that: what a long run approaches
    stage_s: dict[str, float] = field(default_factory=dict)  # summed over this run's finished images
    nodes: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def images_per_s_after_start(self) -> float:
        """Throughput of the job itself, without Ray's start and the basis fit."""
        work = self.seconds - self.ray_start_s - self.basis_s
        return self.done / work if work > 0 else 0.0


# ----------------------------------------------------------------------------- what an earlier run left


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def previous_record(out: Path) -> dict[str, Any]:
    try:
        record = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_previous_run(record: dict[str, Any], out: Path, params: InferParams, overwrite: bool) -> None:
    """Refuse to add outputs made with other parameters to an output folder (unless --overwrite)."""
    previous = record.get("params")
    if overwrite or not isinstance(previous, dict):
        return
    changed = sorted(k for k, v in asdict(params).items() if previous.get(k) != v)
    if changed:
        raise InferInputError(
            f"{out} holds outputs made with other settings ({', '.join(changed)}); "
            "pass --overwrite to redo them, or choose another --out"
        )


def unchanged_broken(folder: Path, relpaths: list[str], errors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The earlier errors.jsonl entries of inputs that were unusable and have not changed since."""
    listed = set(relpaths)
    return {
        e["path"]: e for e in errors
        if e.get("status") == "skipped" and e.get("path") in listed and e.get("stamp") == file_stamp(folder / e["path"])
    }


# ----------------------------------------------------------------------------- the run-wide basis


def run_basis(meta: dict[str, Any], record: dict[str, Any], params: InferParams, options: InferOptions) -> FeatureBasis | None:
    """The run-wide basis at hand: the model's, else the one an earlier run into this folder used (same
    parameters: checked). None with `--pca image`, or when a basis is still to be fitted."""
    if params.pca != "run":
        return None
    if meta.get("feature_basis"):
        return FeatureBasis.from_record(meta["feature_basis"], meta["dim"], "model.json")
    if record.get("feature_basis") and not options.overwrite:
        return FeatureBasis.from_record(record["feature_basis"], meta["dim"], RUN_RECORD)
    return None


def fit_basis(
    candidates: list[dict[str, str]], params: InferParams, options: InferOptions, dim: int,
) -> tuple[FeatureBasis | None, list[dict[str, Any]]]:
    """A basis fitted on the first `options.basis_images` candidates that can be embedded (area-weighted
    superpixel embeddings, as `spix train` does on validation images), and the status rows of every candidate
    tried. Runs stages 1-2 of the job on them, so a file that crashes a decoder costs only itself."""
    moments, used, position, seen = EmbeddingMoments(dim), 0, 0, []
    while used < options.basis_images and position < len(candidates):
        chunk = candidates[position : position + options.basis_images - used]
        position += len(chunk)
        for row in embed_rows(chunk, params, options):
            seen.append(row)
            if row["status"] == "ok":
                superpixels, embeddings = row["superpixels"], row["embeddings"]
                moments.add(embeddings, np.bincount(superpixels.ravel(), minlength=len(embeddings)))
                used += 1
    if not used:
        return None, seen
    source = f"the first {used} usable images of the folder, area-weighted superpixel embeddings"
    return FeatureBasis.from_moments(moments, used, source), seen


# ----------------------------------------------------------------------------- the command


def collect(rows: list[dict[str, Any]], todo: list[str], folder: Path, summary: InferSummary) -> None:
    """Count the status rows of `todo`; an image with no row at all was lost with a crashed worker."""
    by_path = {row["relpath"]: row for row in rows}
    nodes = set(summary.nodes)
    for relpath in todo:
        row = by_path.get(relpath) or {"status": "failed", "reason": LOST, "nodes": ""}
        nodes.update(n for n in row["nodes"].split(",") if n)
        if row["status"] == "ok":
            summary.done += 1
            for name in STAGE_TIMES:
                summary.stage_s[name] = summary.stage_s.get(name, 0.0) + float(row[name])
            continue
        summary.skipped += row["status"] == "skipped"
        summary.failed += row["status"] != "skipped"
        error = {"path": relpath, "status": row["status"], "reason": row["reason"]}
        if row["status"] == "skipped":
            error["stamp"] = file_stamp(folder / relpath)
        summary.errors.append(error)
    summary.nodes = sorted(nodes)


@dataclass
class Plan:
    """What a run finds before it starts: the inputs, their output names, and what is left to do."""

    relpaths: list[str]  # every input, sorted
    names: dict[str, str]  # input -> output name
    kinds: tuple[str, ...]  # kinds of file written per image
    done: set[str]  # inputs whose files all exist
    broken: dict[str, dict[str, Any]]  # unusable inputs of earlier runs, unchanged since: their errors.jsonl lines
    todo: list[str]
    record: dict[str, Any]  # the earlier run's infer.json ({} when none)
    ignored: int  # files that are not images


def plan_run(folder: Path, out: Path, params: InferParams, options: InferOptions) -> Plan:
    """Check the folders and an earlier run's settings, list the inputs, apply the re-run rules (module doc)."""
    if not folder.is_dir():
        raise InferInputError(f"{folder} is not a folder")
    relpaths, ignored = list_inputs(folder, out)
    if not relpaths:
        raise InferInputError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {folder} or below")
    if out == folder:
        raise InferInputError("--out must not be the input folder itself (a re-run would read the outputs)")
    record = previous_record(out)
    check_previous_run(record, out, params, options.overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferInputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    remove_partial_files(out)
    names, kinds = output_names(relpaths), options.file_kinds
    broken = {} if options.overwrite else unchanged_broken(folder, relpaths, read_json_lines(out / ERRORS_FILE))
    done = {r for r in relpaths if not options.overwrite and is_done(out, names[r], kinds)}
    todo = [r for r in relpaths if r not in done and r not in broken]
    return Plan(relpaths, names, kinds, done, broken, todo, record, ignored)


def process(
    plan: Plan, folder: Path, out: Path, params: InferParams, options: InferOptions, meta: dict[str, Any],
    basis: FeatureBasis | None, probe: LinearProbe | None, summary: InferSummary, on_progress: Callable[[int], None],
) -> FeatureBasis | None:
    """Start Ray, fit the run-wide basis when one is needed and none exists, run the job on `plan.todo`.
    Returns the basis the pictures used."""
    from spix.pipeline.cluster import init_ray

    ray_start = time.perf_counter()
    init_ray(options.address, options.num_cpus)
    summary.ray_started, summary.ray_start_s = True, time.perf_counter() - ray_start
    items = {r: {"relpath": r, "name": plan.names[r], "path": str(folder / r)} for r in plan.relpaths}
    todo = plan.todo
    with ray_quieted():
        if basis is None and "features" in plan.kinds and params.pca == "run":
            basis_start = time.perf_counter()
            basis, seen = fit_basis([items[r] for r in plan.relpaths if r not in plan.broken], params, options, meta["dim"])
            summary.basis_s = time.perf_counter() - basis_start
            failed = [row["relpath"] for row in seen if row["status"] != "ok" and row["relpath"] in todo]
            collect(seen, failed, folder, summary)  # an input that failed here would fail again: not retried
            on_progress(len(failed))
            todo = [r for r in todo if r not in failed]
            if basis is None:  # no candidate came back at all (lost with crashed workers)
                collect([], todo, folder, summary)
                return None
        if todo:
            config = step_config(plan.kinds, **asdict(params))
            job_start = time.time()
            rows = run_job([items[r] for r in todo], out, params, options, config, basis, probe, on_progress)
            record_pace(rows, job_start, time.time(), summary)
            collect(rows, todo, folder, summary)
    return basis


def record_pace(rows: list[dict[str, Any]], job_start: float, job_end: float, summary: InferSummary) -> None:
    """Split the job's time (wall clock) into the model actors' start-up (until the first actor has loaded the
    model) and the pace after it, so a short run's throughput is not read as the steady one."""
    ready = [row["model_ready"] for row in rows if row["status"] == "ok"]
    if not ready:
        return
    first = min(ready)
    summary.model_ready_s = first - job_start
    summary.images_per_s_after_ready = len(ready) / (job_end - first) if job_end > first else 0.0


def run_infer(
    folder: Path, out: Path, params: InferParams, options: InferOptions, meta: dict[str, Any],
    probe: LinearProbe | None = None, class_names: dict[int, str] | None = None,
    on_start: Callable[[int], None] = lambda total: None, on_progress: Callable[[int], None] = lambda n: None,
) -> InferSummary:
    """The whole command: plan, process what is left with Ray (nothing starts when nothing is left), then
    errors.jsonl, the legend, infer.json and the gallery. `meta` is the model's model.json."""
    start = time.perf_counter()
    folder, out = folder.resolve(), out.resolve()
    plan = plan_run(folder, out, params, options)
    summary = InferSummary(inputs=len(plan.relpaths), already_done=len(plan.done), broken_before=len(plan.broken),
                           ignored_files=plan.ignored)
    basis = run_basis(meta, plan.record, params, options)
    on_start(len(plan.todo))
    if plan.todo:
        basis = process(plan, folder, out, params, options, meta, basis, probe, summary, on_progress)
    summary.seconds = time.perf_counter() - start
    errors = summary.errors + [plan.broken[r] for r in plan.relpaths if r in plan.broken]
    write_text_atomic(out / ERRORS_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    if probe is not None:
        write_png(out / LEGEND, legend_picture(class_names or {int(c): f"class {c}" for c in probe.classes_}))
    write_record(out, params, options, basis, summary)
    entries = [GalleryEntry(r, plan.names[r], folder / r, output_files(out, plan.names[r], plan.kinds))
               for r in plan.relpaths if is_done(out, plan.names[r], plan.kinds)]
    write_gallery(out, folder, entries, errors, out / LEGEND if probe is not None else None, params.soft_layers)
    return summary


def write_record(out: Path, params: InferParams, options: InferOptions, basis: FeatureBasis | None, summary: InferSummary) -> None:
    """OUT/infer.json: parameters, the basis the feature pictures use, counts and where the time went."""
    per_image = {name: (summary.stage_s.get(name, 0.0) / summary.done if summary.done else 0.0) for name in STAGE_TIMES}
    record = {
        "params": asdict(params),
        "checkpoint": options.checkpoint,
        "classifier": options.classifier,
        "outputs": list(options.file_kinds),
        "feature_basis": basis.to_record() if basis is not None else None,
        "summary": {
            **asdict(summary), "errors": len(summary.errors), "images_per_s": summary.images_per_s,
            "images_per_s_after_start": summary.images_per_s_after_start, "stage_s_per_image": per_image,
        },
    }
    write_text_atomic(out / RUN_RECORD, json.dumps(record, indent=1, ensure_ascii=False))
