"""`spix train`: DDP training on Ray Train (TorchTrainer), reading the Parquet shards with Ray Data.

`train_worker` runs in every Ray Train worker: it streams its planned crops from a Ray Data pipeline
(trainer.feed) into the plain epoch loop of trainer.loop. `run_training` is the driver side: checks the
input, lists the training row groups, runs the trainer, and writes RUN/model.pt + RUN/model.json from
the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from spix.pipeline.files import write_text_atomic
from spix.pipeline.shards import ShardFormatError, list_row_groups, read_manifest
from spix.trainer.checkpoint import (
    embedding_dim,
    load_training_state,
    model_meta,
    save_training_state,
    unwrap,
    write_final_model,
)
from spix.trainer.config import TrainConfig
from spix.trainer.embedding import EmbeddingMoments
from spix.trainer.feed import crop_settings, ray_batches, training_plan, worker_samples
from spix.trainer.loop import (
    EpochTotals,
    StepFn,
    batch_norm_layers,
    estimate_on_training_images,
    learning_rate,
    out_of_time,
    planned_steps,
    run_epoch,
    step_function,
    validate,
)
from spix.trainer.metrics import pair_scores_auc
from spix.trainer.model import build_model, runs_bf16_at_inference

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
RAY_DIR = "ray"  # Ray Train's storage (checkpoints) inside the run folder


class TrainingInputError(ValueError):
    """Input that makes training impossible (no shards, too little data); one clear line for the user."""


def check_training_input(config: TrainConfig) -> dict[str, Any]:
    """The manifest, after checking the shards can feed `workers` x `batch_size` (else TrainingInputError)."""
    try:
        manifest = read_manifest(config.shards)
    except ShardFormatError as exc:
        raise TrainingInputError(str(exc)) from None
    train_images = manifest["splits"].get("training", {}).get("images", 0)
    if train_images == 0:
        raise TrainingInputError(f"{config.shards}: no training images in the shards")
    per_worker = train_images // config.workers
    if per_worker < config.batch_size:
        raise TrainingInputError(
            f"--batch-size {config.batch_size} per worker is larger than the data: {train_images} training images "
            f"over {config.workers} workers give {per_worker} each; lower --batch-size or --workers"
        )
    return manifest


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers across workers (all_reduce); identity without a process group."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: Any) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, value)
        return gathered
    return [value]


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int, dict[str, Any] | None]:
    """(first epoch, global step, feature basis) after loading Ray Train's latest checkpoint, if any."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, 0, None
    with checkpoint.as_directory() as folder:
        state = load_training_state(Path(folder))
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"], state["step"], state.get("feature_basis")


def train_worker(config_dict: dict[str, Any]) -> None:
    """Per-worker training function (Ray Train): model, DDP, the epoch stream, checkpoints, metrics."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**config_dict["train"])
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)  # identical initial weights everywhere (DDP also broadcasts rank 0's)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = ray.train.torch.get_device()
    model = build_model(config.preset)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    finished_epochs, step, basis = restore(model, optimizer)
    if rank == 0:
        keep_metrics_before(Path(config.out) / METRICS_FILE, finished_epochs)
        if finished_epochs:
            log_event(Path(config.out), {"event": "restored", "epoch": finished_epochs, "step": step})
    plan = training_plan(config, config_dict["groups"], workers)
    settings = crop_settings(config, config_dict["groups"], config_dict["manifest"])
    batches = ray_batches(
        plan, rank, finished_epochs, config.epochs, settings, device, config.prefetch_batches, config.deterministic,
        config_dict["pause_idle"],
    )
    train_step = config_dict["make_step"](config, device, rank)
    horizon = config.epochs * plan.steps_per_epoch
    started = time.perf_counter()
    for epoch in range(finished_epochs, config.epochs):
        totals = run_epoch(model, batches, plan.steps_per_epoch, optimizer, train_step, lambda s: learning_rate(config, s, horizon), step)
        step += totals.steps
        # Rank 0's clock decides when to stop and how long the schedule still runs, for every rank alike.
        seconds, session_epochs = time.perf_counter() - started, epoch + 1 - finished_epochs
        decided = [out_of_time(config, seconds), planned_steps(config, plan.steps_per_epoch, epoch + 1, session_epochs, seconds)]
        stop, horizon = reduce_sum([float(v) if rank == 0 else 0.0 for v in decided], device)
        horizon = int(horizon)
        last = stop > 0 or epoch + 1 == config.epochs
        # The final model's BN statistics, before its validation and checkpoint.
        bn_images = whole_image_batch_norm(model, config, device, rank, workers) if last else 0
        metrics, basis = epoch_metrics(model, config, epoch + 1, step, totals, device, rank, workers, basis)
        metrics["lr"] = learning_rate(config, step - 1, horizon)
        metrics["stopped_by_time"] = stop > 0
        metrics["bn_images"] = bn_images
        report_epoch(model, optimizer, epoch + 1, step, metrics, config, rank, basis)
        if stop > 0:
            break


def whole_image_batch_norm(model: torch.nn.Module, config: TrainConfig, device: torch.device, rank: int, workers: int) -> int:
    """BN statistics of the final model from `bn_images` whole training images, each worker estimating
    them on its share, then averaged over the workers weighted by their image counts (the same on every
    rank, so rank 0's checkpoint holds the average of all). Returns the images used by all workers."""
    count = estimate_on_training_images(unwrap(model), config, device, rank, workers)
    total = int(reduce_sum([float(count)], device)[0])
    if total == 0 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return total
    for norm in batch_norm_layers(unwrap(model)):
        for statistic in (norm.running_mean, norm.running_var):
            statistic.mul_(count / total)
            torch.distributed.all_reduce(statistic)
    return total


def epoch_metrics(
    model: torch.nn.Module, config: TrainConfig, epoch: int, step: int, totals: EpochTotals, device: torch.device,
    rank: int, workers: int, basis: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The epoch's metrics line (summed over workers) and the feature basis of the validation embeddings."""
    summed = reduce_sum(
        [totals.loss_sum, totals.pos_dist_sum, totals.neg_dist_sum, totals.steps, totals.images, totals.data_wait_s / totals.seconds],
        device,
    )
    loss_sum, pos_sum, neg_sum, steps, images, wait_fraction = summed
    samples = worker_samples(config.shards, "validation", config.val_max_images, rank, workers)
    parts = gather_objects(validate(unwrap(model), samples, device, config.min_purity, config.seed, runs_bf16_at_inference(device)))
    val_images = sum(p.images for p in parts)
    moments = [p.moments for p in parts if p.moments is not None]
    if moments:
        merged = EmbeddingMoments(len(moments[0].first))
        for m in moments:
            merged.merge(m)
        basis = {**merged.principal_basis(), "images": val_images, "source": "validation superpixel embeddings, area-weighted"}
    metrics = {
        "epoch": epoch,  # 1-based: the number of epochs finished
        "step": step,  # equal on every rank: the plan gives each the same number of batches
        "train_loss": loss_sum / max(steps, 1),
        "pos_dist": pos_sum / max(steps, 1),
        "neg_dist": neg_sum / max(steps, 1),
        "images_per_s": images / totals.seconds,
        "data_wait": wait_fraction / workers,  # share of the step loop spent waiting for batches
        "val_loss": sum(p.loss_sum for p in parts) / max(val_images, 1) if val_images else float("nan"),
        "val_pair_auc": pair_scores_auc(np.concatenate([p.scores for p in parts]), np.concatenate([p.positives for p in parts])),
        "val_images": val_images,
        "seconds": totals.seconds,
        "workers": workers,
        "ranks_in_sync": len(set(gather_objects(parameter_digest(model)))) == 1,
    }
    if device.type == "cuda":
        metrics["peak_gpu_memory_gib"] = max(gather_objects(totals.peak_memory_bytes)) / 2**30
    return metrics, basis


def report_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int, metrics: dict[str, Any],
    config: TrainConfig, rank: int, basis: dict[str, Any] | None,
) -> None:
    """Rank 0 saves the checkpoint and appends the metrics line; every rank reports (Ray Train needs all)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_training_state(Path(folder), model, optimizer, epoch, step, asdict(config), basis)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    if rank == 0:
        with open(Path(config.out) / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")


def parameter_digest(model: torch.nn.Module) -> str:
    """sha1 of every parameter, bit for bit: equal on all ranks when DDP keeps them in sync.

    BN running statistics are left out: each rank updates them from its own last batch, and DDP
    re-broadcasts rank 0's at the next forward.
    """
    digest = hashlib.sha1()
    for tensor in unwrap(model).parameters():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def log_event(run_dir: Path, event: dict[str, Any]) -> None:
    """RUN/events.jsonl: restores and other things a person reading the run should know about."""
    with open(run_dir / EVENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**event, "time": time.time()}) + "\n")


def keep_metrics_before(path: Path, finished_epochs: int) -> None:
    """After a restore, drop metric lines of epochs that will be trained again (no duplicates)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= finished_epochs]
        write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def run_training(
    config: TrainConfig, address: str = "", resume: bool = False, on_epoch: Callable[[dict[str, Any]], None] = lambda metrics: None,
    make_step: Callable[[TrainConfig, torch.device, int], StepFn] = step_function, pause_idle: bool = True,
) -> Path:
    """Driver: check input, start Ray, fit with TorchTrainer, write RUN/model.pt and RUN/model.json.

    `make_step(config, device, rank)` builds each worker's training step; benchmarks swap in a stand-in,
    and turn off `pause_idle` (feed.stream_batches) to measure what it buys.
    """
    import threading

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from spix.pipeline.cluster import init_ray

    manifest = check_training_input(config)
    run_dir = Path(config.out).resolve()
    if not resume and (run_dir / RAY_DIR).exists():
        raise TrainingInputError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    if resume and not (run_dir / RAY_DIR).exists():
        raise TrainingInputError(f"--resume: {run_dir} holds no run to continue")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(**{**asdict(config), "out": str(run_dir), "shards": absolute_uri(config.shards)})
    groups = list_row_groups(config.shards, "training")
    init_ray(address, num_cpus=local_cpus(config))
    check_cluster_fits(config, ray.cluster_resources())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train": asdict(config), "groups": groups, "manifest": manifest, "make_step": make_step,
                           "pause_idle": pause_idle},
        torch_config=TorchConfig(backend="nccl" if config.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpu, resources_per_worker=worker_resources(config)),
        run_config=RunConfig(
            name=RAY_DIR, storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit_in_background() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # reported below, in the driver's thread
            outcome["error"] = exc

    fit = threading.Thread(target=fit_in_background, daemon=True)
    fit.start()
    seen = len(read_metrics(run_dir)) if resume else 0
    while fit.is_alive():
        fit.join(timeout=1.0)
        lines = read_metrics(run_dir)
        for metrics in lines[seen:]:
            on_epoch(metrics)
        seen = max(seen, len(lines))
    result = outcome.get("result")
    if result is None or result.checkpoint is None:
        raise RuntimeError(f"training failed: {outcome.get('error') or getattr(result, 'error', 'no checkpoint')}")
    with result.checkpoint.as_directory() as folder:
        state = load_training_state(Path(folder))
    meta = model_meta(config.preset, embedding_dim(state["model"]), manifest["params"], manifest.get("class_names", []), asdict(config))
    write_final_model(run_dir, state["model"], {**meta, "feature_basis": state.get("feature_basis")})
    return run_dir


def absolute_uri(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def check_cluster_fits(config: TrainConfig, resources: Mapping[str, float]) -> None:
    """Ray Train waits without end for workers it cannot place (`spix train --gpu` with the default two workers
    on a one-GPU machine would sit silent): say at once what is missing."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if config.gpu and gpus < 1:
        raise TrainingInputError("--gpu: Ray sees no GPU; train with --no-gpu")
    if config.gpu and gpus < config.workers:
        raise TrainingInputError(
            f"--workers {config.workers} on GPUs needs {config.workers} GPUs (one per worker), Ray sees {gpus:g}: "
            f"pass --workers {int(gpus)}"
        )
    if cpus < config.workers + 1:
        raise TrainingInputError(
            f"--workers {config.workers} needs {config.workers + 1} CPUs (one per worker, one for the data stream), "
            f"Ray sees {cpus:g}: lower --workers"
        )


def worker_resources(config: TrainConfig) -> dict[str, float]:
    return {"CPU": 1, **({"GPU": 1} if config.gpu else {})}


def local_cpus(config: TrainConfig) -> int:
    """Logical CPUs of a local Ray: every core, and at least one beyond the training workers for Ray Data."""
    return max(os.cpu_count() or 1, config.workers + 1)
