"""Batches for the epoch loop: the Ray Data stream of a worker, the same crops in-process, a worker's share of
whole images (validation, BN statistics).

The Ray Data stream maps the plain `crop_task` over the worker's read tasks on any CPU of the cluster
(one task per window of row groups), keeps the planned order, and hands ready batches to the training
step with `prefetch_batches` of them made ahead, copied into pinned memory and onto the GPU in Ray's
background thread. `local_batches` makes exactly the same batches in the calling process.
"""

from __future__ import annotations

import time
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from spix.pipeline.shards import RowGroup, iter_rows, row_to_sample
from spix.trainer.config import TrainConfig
from spix.trainer.data import Batch, CropSettings, crop_task, trim_slots
from spix.trainer.plan import ReadTask, TrainingPlan, first_keys

MAX_TASKS_PER_DATASET = 512
# Ray Data's scheduling loop (a thread in each training worker) waits in ray.wait only while crop tasks
# run; when its output buffer is full it loops without pause, holding the GIL. A loop step that came back
# faster than IDLE_STEP_S is taken as idle and followed by an IDLE_PAUSE_S sleep (see pause_when_idle).
IDLE_STEP_S = 0.002
IDLE_PAUSE_S = 0.02


def training_plan(config: TrainConfig, groups: Sequence[RowGroup], workers: int) -> TrainingPlan:
    return TrainingPlan(tuple(g.num_rows for g in groups), config.seed, workers, config.batch_size, config.shuffle_window)


def crop_settings(config: TrainConfig, groups: Sequence[RowGroup], manifest: dict[str, Any]) -> CropSettings:
    """What every crop task of the run needs: the row groups, the crop and the superpixel slots.

    Slots = the most superpixels of any image in the shards times the images per crop (a crop has at
    most its image's count; a mosaic strip at most its own image's).
    """
    return CropSettings(
        groups=tuple(groups),
        first_keys=first_keys([g.num_rows for g in groups]),
        crop=config.crop,
        scale_range=config.scale_range,
        num_labels=int(manifest["params"]["num_classes"]) + 1,
        slots=int(manifest["superpixels_per_image"]["max"]) * config.mosaic,
        seed=config.seed,
        mosaic=config.mosaic,
    )


def rebatch(chunks: Iterable[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Columns of any length -> columns of exactly `batch_size` rows, in order (a last short batch too)."""
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk["key"])
        while count >= batch_size:
            merged = {name: np.concatenate([part[name] for part in pending]) for name in chunk}
            yield {name: values[:batch_size] for name, values in merged.items()}
            pending = [{name: values[batch_size:] for name, values in merged.items()}]
            count -= batch_size
    if count:
        yield {name: np.concatenate([part[name] for part in pending]) for name in pending[0]}


def local_batches(tasks: Iterable[ReadTask], settings: CropSettings, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """The planned batches, cropped in this process (no Ray)."""
    chunks = (crop_task(task.epoch, task.groups, task.rows, settings) for task in tasks)
    for columns in rebatch(chunks, batch_size):
        yield Batch.from_columns(trim_slots(columns), device)


def crop_items(items: dict[str, np.ndarray], settings: CropSettings) -> dict[str, np.ndarray]:
    """Ray Data's view of `crop_task`: a batch of one task item in, that task's crop columns out."""
    return crop_task(int(items["epoch"][0]), items["groups"][0], items["rows"][0], settings)


def ray_batches(
    plan: TrainingPlan, rank: int, first_epoch: int, last_epoch: int, settings: CropSettings, device: torch.device,
    prefetch_batches: int, deterministic: bool = True, pause_idle: bool = True,
) -> Iterator[Batch]:
    """A worker's planned batches for epochs first_epoch..last_epoch-1, cropped by Ray Data on the cluster's CPUs.

    One dataset streams several epochs back to back, so the crops of the next epoch are made while this
    one trains and validates. Datasets hold at most MAX_TASKS_PER_DATASET tasks (each task is one block,
    ~2 ms to create), so a long run on a large dataset chains several of them.
    """
    per_epoch = max(1, len(plan.tasks(first_epoch, rank)))
    epochs_per_dataset = max(1, MAX_TASKS_PER_DATASET // per_epoch)
    for start in range(first_epoch, last_epoch, epochs_per_dataset):
        tasks = list(plan.stream(rank, start, min(start + epochs_per_dataset, last_epoch)))
        yield from stream_batches(tasks, settings, plan.batch_size, device, prefetch_batches, deterministic, pause_idle)


def trimmed_tensors() -> Any:
    """Ray Data's collate step for the training stream: `trim_slots`, then tensors that Ray pins and
    moves to the device in its prefetch threads (a plain dict of tensors keeps that managed transfer)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class TrimmedTensors(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            # Ray hands read-only arrays; torch wants writable memory (a copy only where it is needed).
            return {name: torch.from_numpy(np.require(values, requirements=["C", "W"])) for name, values in trim_slots(batch).items()}

    return TrimmedTensors()


def pause_when_idle() -> type:
    """An execution callback for Ray Data's scheduling loop that sleeps between idle loop steps.

    While the crops of later epochs wait for the step to take them (backpressure), the loop has no task
    to wait for and spins (py-spy: the StreamingExecutor thread active, holding the GIL). Measured on 2
    cores, `spix train` made 6.5 images/s while its stream was live and 11-12 once it had made all its
    crops; with this pause, 12.7 and 14.5. A pause delays the next crop task by at most IDLE_PAUSE_S,
    far less than the prefetched batches last.
    """
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class PauseWhenIdle(ExecutionCallback):
        def __init__(self) -> None:
            self.last_step = time.perf_counter()

        def on_execution_step(self, executor: Any) -> None:
            if time.perf_counter() - self.last_step < IDLE_STEP_S:
                time.sleep(IDLE_PAUSE_S)
            self.last_step = time.perf_counter()

    return PauseWhenIdle


def stream_batches(
    tasks: Sequence[ReadTask], settings: CropSettings, batch_size: int, device: torch.device,
    prefetch_batches: int, deterministic: bool, pause_idle: bool = True,
) -> Iterator[Batch]:
    """The batches of `tasks` from one Ray Data stream whose crop tasks run on the cluster's CPUs.

    `deterministic` keeps the planned order (Ray Data's preserve_order: a slow task holds back the ones
    after it); without it batches come in the order tasks finish, so runs are no longer repeatable.
    `pause_idle=False` leaves out the PauseWhenIdle callback (benchmarks/train_throughput.py measures it).
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = deterministic
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.custom_execution_callback_classes = [pause_when_idle()] if pause_idle else []
    dataset = ray.data.from_items([task.as_item() for task in tasks], override_num_blocks=max(1, len(tasks)))
    dataset = dataset.map_batches(crop_items, fn_kwargs={"settings": settings}, batch_size=1, num_cpus=1)
    stream = dataset.iter_torch_batches(
        batch_size=batch_size, prefetch_batches=prefetch_batches, device=device, pin_memory=device.type == "cuda",
        collate_fn=trimmed_tensors(),
    )
    for columns in stream:
        yield Batch.from_columns(columns, device)


def worker_samples(shards_uri: str, split: str, max_images: int, rank: int, workers: int) -> Iterator:
    """This worker's share of the first `max_images` images of a split: every `workers`-th, from `rank`.

    A fixed share, so each validation image is scored by the same worker (with the same pair sample) in
    every run. Only the worker's own rows are decoded.
    """
    rows = islice(iter_rows(shards_uri, split), max_images)
    return (row_to_sample(row) for index, row in enumerate(rows) if index % workers == rank)
