"""`spix train`: DDP training on Ray Train (TorchTrainer), reading the Parquet shards with Ray Data.

`train_worker` runs in every Ray Train worker and calls the plain PyTorch pieces of trainer.loop;
`run_training` is the driver side: checks the input, builds the datasets and the trainer, and writes
RUN/model.pt + RUN/model.json from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from spix.pipeline.shards import ShardFormatError, read_manifest, row_to_sample, shard_paths
from spix.trainer.checkpoint import (
    load_training_state,
    model_meta,
    save_training_state,
    unwrap,
    write_final_model,
)
from spix.trainer.data import TRAIN_COLUMNS, Batch, collate, crop_row, rows_of
from spix.trainer.loop import LossConfig, train_step, validate
from spix.trainer.metrics import pair_scores_auc
from spix.trainer.model import build_model

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
RAY_DIR = "ray"  # Ray Train's storage (checkpoints) inside the run folder


class TrainingInputError(ValueError):
    """Input that makes training impossible (no shards, too little data); one clear line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    out: str
    workers: int = 2
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    preset: str = "paper"
    loss: str = "superpixel"
    pixel_samples: int = 1024
    min_purity: float = 0.5
    crop: int = 224
    gpu: bool = False
    amp: bool = False
    seed: int = 0
    loader_threads: int = 2
    val_max_images: int = 200
    max_failures: int = 3

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.pixel_samples, self.min_purity)


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


def crops_of(batch: dict[str, np.ndarray], pool: ThreadPoolExecutor, config: TrainConfig, num_labels: int, epoch: int) -> Batch:
    """Decode and crop a batch of rows in a thread pool (PIL releases the GIL), then collate."""
    rows = rows_of(batch)
    return collate(list(pool.map(lambda row: crop_row(row, config.crop, num_labels, config.seed, epoch), rows)))


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


def validation_samples() -> Iterator:
    import ray.train

    shard = ray.train.get_dataset_shard("validation")
    for row in shard.iter_rows():
        yield row_to_sample(row)


def train_worker(config_dict: dict[str, Any]) -> None:
    """Per-worker training function (Ray Train): model, DDP, epochs, checkpoints, metrics."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**config_dict["train"])
    num_labels = config_dict["num_labels"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(config.seed)  # identical initial weights everywhere (DDP also broadcasts rank 0's)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = ray.train.torch.get_device()
    model = build_model(config.preset)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = load_training_state(Path(folder))
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
    if rank == 0:
        keep_metrics_before(Path(config.out) / METRICS_FILE, start_epoch)
        if checkpoint:
            log_event(Path(config.out), {"event": "restored", "epoch": start_epoch, "step": step})
    generator = torch.Generator(device=device).manual_seed(config.seed + rank)
    train_shard = ray.train.get_dataset_shard("training")
    with ThreadPoolExecutor(config.loader_threads) as pool:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            sums = np.zeros(4)  # loss, pos_dist, neg_dist, steps
            images = 0
            batches = train_shard.iter_batches(
                batch_size=config.batch_size, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=4 * config.batch_size, local_shuffle_seed=config.seed + 1000 * epoch + rank,
            )
            for raw in batches:
                batch = crops_of(raw, pool, config, num_labels, epoch).to(device)
                stats = train_step(model, batch, optimizer, config.loss_config(), config.amp, generator)
                sums += [stats["loss"], stats["pos_dist"], stats["neg_dist"], 1]
                images += len(batch.num_superpixels)
                step += 1
            train_seconds = time.perf_counter() - started
            total_loss, total_pos, total_neg, total_steps, total_images = reduce_sum([*sums, images], device)
            part = validate(unwrap(model), validation_samples(), device, config.min_purity, seed=config.seed, amp=config.amp)
            parts = gather_objects(part)
            val_images = sum(p.images for p in parts)
            metrics = {
                "epoch": epoch,
                "step": step,  # equal on every rank: the streaming split gives each the same number of batches
                "train_loss": total_loss / max(total_steps, 1),
                "pos_dist": total_pos / max(total_steps, 1),
                "neg_dist": total_neg / max(total_steps, 1),
                "images_per_s": total_images / train_seconds,
                "val_loss": sum(p.loss_sum for p in parts) / max(val_images, 1),
                "val_pair_auc": pair_scores_auc(np.concatenate([p.scores for p in parts]), np.concatenate([p.positives for p in parts])),
                "val_images": val_images,
                "seconds": time.perf_counter() - started,
                "workers": context.get_world_size(),
                "ranks_in_sync": len(set(gather_objects(parameter_digest(model)))) == 1,
            }
            report_epoch(model, optimizer, epoch, step, metrics, config, rank)


def report_epoch(model, optimizer, epoch: int, step: int, metrics: dict[str, Any], config: TrainConfig, rank: int) -> None:
    """Rank 0 saves the checkpoint and appends the metrics line; every rank reports (Ray Train needs all)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_training_state(Path(folder), model, optimizer, epoch, step, asdict(config))
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


def keep_metrics_before(path: Path, epoch: int) -> None:
    """After a restore, drop metric lines of epochs that will be trained again (no duplicates)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < epoch]
        path.write_text("".join(line + "\n" for line in lines))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def run_training(config: TrainConfig, address: str = "", resume: bool = False, on_epoch=lambda metrics: None) -> Path:
    """Driver: check input, start Ray, fit with TorchTrainer, write RUN/model.pt and RUN/model.json."""
    import threading

    import ray
    import ray.data
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
    init_ray(address, num_cpus=local_cpus(config))
    datasets = {
        "training": ray.data.read_parquet(shard_paths(config.shards, "training"), columns=TRAIN_COLUMNS),
        "validation": ray.data.read_parquet(shard_paths(config.shards, "validation"), columns=VALIDATION_COLUMNS).limit(config.val_max_images),
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train": asdict(config), "num_labels": manifest["params"]["num_classes"] + 1},
        torch_config=TorchConfig(backend="nccl" if config.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpu, resources_per_worker=worker_resources(config)),
        run_config=RunConfig(
            name=RAY_DIR, storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
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
    write_final_model(run_dir, state["model"], model_meta(config.preset, 128, manifest["params"], manifest.get("class_names", []), asdict(config)))
    return run_dir


VALIDATION_COLUMNS = ["image_id", "image", "labels", "superpixels", "height", "width", "sp_area", "sp_label", "sp_purity", "sp_centroid", "sp_mean_rgb"]


def absolute_uri(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def worker_resources(config: TrainConfig) -> dict[str, float]:
    return {"CPU": 1, **({"GPU": 1} if config.gpu else {})}


def local_cpus(config: TrainConfig) -> int:
    """Logical CPUs of a local Ray: every core, and at least one beyond the training workers for Ray Data."""
    return max(os.cpu_count() or 1, config.workers + 1)
