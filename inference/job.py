"""The Ray Data job of `spix infer`: three stages that stream a list of images into output files.

1. `prepare_row` (CPU task, one image per block, so a crash in a decoder or in SLIC costs one image): read,
   decode upright, shrink, SLIC.
2. `ModelStage` (actor pool, one actor per GPU, else CPU actors): holds an `InferenceStep`, which runs the
   model and all the numeric post-processing on the actor's device.
3. `write_row` (CPU task): encodes and writes the files, and hands the driver a small status row.

Arrays travel between stages as array columns (Ray's tensor extension types; images of different sizes are
variable-shaped tensors). An input that cannot be used becomes a row with status "skipped" and empty arrays;
a processing error becomes "failed"; both reach the driver with their reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from spix.inference.basis import FeatureBasis
from spix.inference.inputs import decode_input
from spix.inference.outputs import write_image_files
from spix.inference.settings import InferInputError, InferOptions, InferParams
from spix.inference.step import ImageResult, InferenceStep, StepConfig, step_config
from spix.pipeline.cluster import node_id
from spix.pipeline.imageio import BadInputError
from spix.pipeline.superpixels import compute_superpixels
from spix.trainer.checkpoint import load_model
from spix.trainer.model import runs_bf16_at_inference
from spix.trainer.probe import LinearProbe

# Ray Data loggers that only announce start and finish (the "ray.data" logger itself is reset by Ray at every
# execution; block errors come from another logger and stay visible).
RAY_DATA_CHATTER = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")
TASK_RETRIES = 2  # Ray Data retries crashed tasks and actor calls forever by default: a crashing image would hang the run
STAGE_TIMES = ("decode_s", "slic_s", "forward_s", "post_s", "write_s")
EMPTY = {  # what an image without a result carries in each array column: the column's dtype and number of axes
    "rgb": np.zeros((0, 0, 3), np.uint8), "superpixels": np.zeros((0, 0), np.uint16),
    "embeddings": np.zeros((0, 0), np.float32), "features": np.zeros((0, 0, 3), np.uint8),
    "layers": np.zeros((0, 0, 0), np.uint8), "composite": np.zeros((0, 0, 3), np.uint8),
    "dense": np.zeros((0, 0, 0), np.float16), "classes": np.zeros((0,), np.uint8),
}


# ----------------------------------------------------------------------------- stage 1: decode + SLIC


def prepare_row(item: dict[str, str], params: InferParams) -> dict[str, Any]:
    """Read, decode, shrink, SLIC. A broken input becomes a 'skipped' row, a SLIC error a 'failed' one."""
    row = {
        **item, "status": "ok", "reason": "", "orig_height": 0, "orig_width": 0, "rgb": EMPTY["rgb"],
        "superpixels": EMPTY["superpixels"], "decode_s": 0.0, "slic_s": 0.0, "nodes": node_id(),
    }
    start = time.perf_counter()
    try:
        rgb, (orig_height, orig_width) = decode_input(item["path"], params.max_side)
    except BadInputError as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    decoded = time.perf_counter()
    try:
        superpixels = compute_superpixels(rgb, params.num_superpixels, params.compactness)
    except Exception as exc:
        return {**row, "status": "failed", "reason": f"superpixels: {type(exc).__name__}: {exc}"}
    return {
        **row, "orig_height": orig_height, "orig_width": orig_width, "rgb": rgb, "superpixels": superpixels,
        "decode_s": decoded - start, "slic_s": time.perf_counter() - decoded,
    }


# ----------------------------------------------------------------------------- stage 2: the model actor


class ModelStage:
    """Loads the model once, then runs the inference step on batches of prepared rows."""

    PASSED_ON = ("relpath", "name", "status", "reason", "orig_height", "orig_width", "decode_s", "slic_s")

    def __init__(
        self, checkpoint: str, device: str, threads: int, config: StepConfig, basis: dict[str, Any] | None,
        probe: LinearProbe | None,
    ):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        model, meta = load_model(Path(checkpoint), self.device)
        gpu = self.device.type == "cuda"
        # Stacking helps a GPU; on CPUs it only multiplies memory (about 4-5 GB per megapixel for the paper model).
        self.step = InferenceStep(
            model, self.device, config, FeatureBasis.from_record(basis, meta["dim"], "basis") if basis else None,
            probe, amp=runs_bf16_at_inference(self.device), max_stack=None if gpu else 1, post_threads=None if gpu else 1,
        )
        self.columns = result_columns(config.kinds)
        self.node = node_id()
        self.ready_at = time.time()  # wall clock (the driver's is another process's): the end of this actor's start-up

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        size = len(batch["relpath"])
        out = {key: list(batch[key]) for key in self.PASSED_ON}
        out.update({column: [EMPTY[column]] * size for column in self.columns})
        out.update(forward_s=[0.0] * size, post_s=[0.0] * size, nodes=[f"{nodes},{self.node}" for nodes in batch["nodes"]],
                   model_ready=[self.ready_at] * size)
        ready = [i for i in range(size) if batch["status"][i] == "ok"]
        results = self.run([batch["rgb"][i] for i in ready], [batch["superpixels"][i] for i in ready])
        for i, result in zip(ready, results):
            if isinstance(result, str):
                out["status"][i], out["reason"][i] = "failed", result
                continue
            for column in self.columns:
                out[column][i] = batch[column][i] if column in ("rgb", "superpixels") else getattr(result, column)
            out["forward_s"][i], out["post_s"][i] = result.forward_s, result.post_s
        return out

    def run(self, images: list[np.ndarray], superpixels: list[np.ndarray]) -> list[ImageResult | str]:
        """The whole batch at once; if that fails (e.g. out of memory), image by image, failures as messages."""
        try:
            return self.step(images, superpixels)
        except Exception:
            return [self.run_one(rgb, sp) for rgb, sp in zip(images, superpixels)]

    def run_one(self, rgb: np.ndarray, superpixels: np.ndarray) -> ImageResult | str:
        try:
            return self.step([rgb], [superpixels])[0]
        except Exception as exc:
            return f"model: {type(exc).__name__}: {exc}"


def result_columns(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The array columns the model stage hands on for these kinds of output (the writer needs no more)."""
    per_kind = {"inputs": ("rgb",), "features": ("features",), "soft": ("layers", "composite"), "dense": ("dense",),
                "labels": ("classes",)}
    return ("superpixels", "embeddings") + tuple(c for kind in kinds for c in per_kind.get(kind, ()))


# ----------------------------------------------------------------------------- stage 3: write


def write_row(row: dict[str, Any], out: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Encode and write one image's files. Returns the small status row the driver keeps."""
    status, reason = str(row["status"]), str(row["reason"])
    start = time.perf_counter()
    if status == "ok":
        try:
            write_image_files(Path(out), str(row["name"]), kinds, row)
        except Exception as exc:
            status, reason = "failed", f"writing: {type(exc).__name__}: {exc}"
    times = {name: float(row.get(name, 0.0)) for name in STAGE_TIMES}
    times["write_s"] = time.perf_counter() - start if status == "ok" else 0.0
    return {"relpath": str(row["relpath"]), "status": status, "reason": reason, "nodes": f"{row['nodes']},{node_id()}",
            "model_ready": float(row["model_ready"]), **times}


# ----------------------------------------------------------------------------- the job


def actor_layout(cpus: float, gpus: float, use_gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor).

    One actor per GPU. On CPUs, actors of up to 4 torch threads, always leaving one CPU (or half of a lone
    CPU) to the decode and writing tasks, which would otherwise never run.
    """
    if use_gpu:
        return max(1, int(gpus)), 1.0, 1.0
    if cpus < 2:
        return 1, cpus / 2, 0.0
    threads = min(4, int(cpus) - 1)
    return max(1, (int(cpus) - 1) // threads), float(threads), 0.0


def model_threads(cpus: float, actors: int, actor_cpus: float, use_gpu: bool) -> int:
    """torch threads of a model actor: on CPUs the actors share every core, the ones Ray keeps for the decode
    and writing tasks included (those are light beside the forward pass and interleave)."""
    if use_gpu:
        return max(1, int(actor_cpus))
    return max(1, int(cpus) // actors)


def quiet_ray_data() -> None:
    """Ray Data without its own progress bars and start/finish notices (the command draws its own bar);
    a crashed worker costs its images (reported as lost), not the run."""
    import ray

    for chatter in RAY_DATA_CHATTER:
        logging.getLogger(chatter).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1


@contextlib.contextmanager
def retry_limits() -> Iterator[None]:
    """Around map calls given `max_retries`/`max_task_retries`: Ray 2.60 warns that these remote args are
    deprecated but has no named parameter for them yet."""
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        yield


def model_dataset(
    items: list[dict[str, str]], params: InferParams, options: InferOptions, config: StepConfig,
    basis: FeatureBasis | None, probe: LinearProbe | None,
):
    """Stages 1 and 2 over `items` (relpath, name, path), as a lazy Ray Dataset."""
    import ray

    quiet_ray_data()
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    use_gpu = gpus > 0 if options.gpu is None else options.gpu
    if use_gpu and not gpus:
        raise InferInputError("--gpu: Ray sees no GPU")
    actors, actor_cpus, actor_gpus = actor_layout(resources.get("CPU", 1), gpus, use_gpu)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one image per block: a crash costs one
    with retry_limits():
        dataset = dataset.map(prepare_row, fn_kwargs={"params": params}, num_cpus=1, max_retries=TASK_RETRIES)
        return dataset.map_batches(
            ModelStage,
            fn_constructor_kwargs={
                "checkpoint": options.checkpoint, "device": "cuda" if use_gpu else "cpu",
                "threads": model_threads(resources.get("CPU", 1), actors, actor_cpus, use_gpu),
                "config": config, "basis": basis.to_record() if basis else None, "probe": probe,
            },
            batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus, num_gpus=actor_gpus, max_task_retries=TASK_RETRIES,
        )


def run_job(
    items: list[dict[str, str]], out: Path, params: InferParams, options: InferOptions, config: StepConfig,
    basis: FeatureBasis | None, probe: LinearProbe | None, on_progress: Callable[[int], None],
) -> list[dict[str, Any]]:
    """Stream every item through the three stages; returns one status row per image that came back."""
    dataset = model_dataset(items, params, options, config, basis, probe)
    with retry_limits():
        dataset = dataset.map(write_row, fn_kwargs={"out": str(out), "kinds": config.kinds}, num_cpus=1, max_retries=TASK_RETRIES)
    results = []
    for row in dataset.iter_rows():
        results.append(row)
        on_progress(1)
    return results


def embed_rows(items: list[dict[str, str]], params: InferParams, options: InferOptions) -> list[dict[str, Any]]:
    """Stages 1 and 2 only, embeddings only, rows back to the driver: what a run-wide basis is fitted on."""
    config = step_config(("embeddings",), **asdict(params))
    return list(model_dataset(items, params, options, config, None, None).iter_rows())
