"""`spix train`: superpixel N-pair metric learning, DDP on Ray Train, from the Parquet shards."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import typer

from spix.cli.config import resolve
from spix.cli.ui import fail


def train(
    shards: str | None = typer.Option(None, help="Shard folder written by `spix preprocess` (default: data/shards)."),
    out: str | None = typer.Option(None, help="Run folder (default: a new runs/<date-time>)."),
    workers: int | None = typer.Option(None, help="Ray Train workers, one DDP process each (default: 2)."),
    epochs: int | None = typer.Option(None, help="Epochs (default: 10)."),
    batch_size: int | None = typer.Option(None, help="Images per worker per step (default: 8)."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (default: 0.001)."),
    preset: str | None = typer.Option(None, help="Model widths: paper (64/128/256) or tiny (default: paper)."),
    loss: str | None = typer.Option(None, help="superpixel (the method) or pixel (sampled-pixel baseline) (default: superpixel)."),
    pixel_samples: int | None = typer.Option(None, help="Pixels sampled per image by --loss pixel (default: 1024)."),
    crop: int | None = typer.Option(None, help="Side of the random square training crop (default: 224)."),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="One GPU per worker, NCCL (default: GPU when Ray sees one)."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="bf16 autocast on GPU (default: on)."),
    seed: int | None = typer.Option(None, help="Seed of weights, crops and shuffling (default: 0)."),
    max_minutes: float | None = typer.Option(None, help="Stop at the end of the first epoch that passes this many minutes of training; 0 = no limit (default: 0)."),
    deterministic: bool | None = typer.Option(None, "--deterministic/--nondeterministic", help="Batches in planned order, so the same seed and workers give the same run; --nondeterministic takes crops as they finish (default: deterministic)."),
    address: str | None = typer.Option(None, help="Join a Ray cluster: 'auto' or HOST:PORT (default: local Ray)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with a \\[train] section; flags override it."),
) -> None:
    """Train the feature extractor with the superpixel N-pair loss (DDP on Ray Train: gloo on CPU, NCCL on GPU).

    Every epoch: a checkpoint, and a metrics line (loss, pair distances, images/s, validation loss and
    pair AUC) printed and appended to RUN/metrics.jsonl. At the end RUN/model.pt and RUN/model.json.
    """
    from spix.trainer.config import TrainConfig
    from spix.trainer.distributed import TrainingInputError, read_metrics, run_training
    from spix.trainer.losses import LOSSES
    from spix.trainer.model import PRESETS

    s = resolve(
        "train", config,
        dict(shards=shards, out=out, workers=workers, epochs=epochs, batch_size=batch_size, lr=lr, preset=preset,
             loss=loss, pixel_samples=pixel_samples, crop=crop, gpu=gpu, amp=amp, seed=seed, max_minutes=max_minutes,
             deterministic=deterministic, address=address),
    )
    if s["preset"] not in PRESETS or s["loss"] not in LOSSES:
        fail(f"--preset must be one of {sorted(PRESETS)} and --loss one of {list(LOSSES)}")
    if min(s["workers"], s["epochs"], s["batch_size"], s["crop"], s["pixel_samples"]) < 1 or s["max_minutes"] < 0:
        fail("--workers, --epochs, --batch-size, --crop and --pixel-samples must be >= 1, --max-minutes >= 0")
    if resume and not s["out"]:
        fail("--resume needs --out RUN, the run folder to continue")
    s["out"] = s["out"] or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if s["gpu"] == "auto":
        s["gpu"] = gpu_available(s["address"])
    s["amp"] = bool(s["amp"] and s["gpu"])
    address_used = s.pop("address")
    config_values = {k: v for k, v in s.items() if k in TrainConfig.__dataclass_fields__}
    try:
        run_dir = run_training(TrainConfig(**config_values), address=address_used, resume=resume, on_epoch=print_epoch)
    except TrainingInputError as exc:
        fail(str(exc))
    except RuntimeError as exc:  # the workers' error snippet, after Ray Train's retries ran out
        fail(str(exc))
    last = read_metrics(run_dir)[-1]
    if last.get("stopped_by_time"):
        typer.echo(f"stopped after epoch {last['epoch']}: more than --max-minutes {s['max_minutes']:g} of training")
    typer.echo(f"done: {run_dir}/model.pt and model.json; metrics in {run_dir}/metrics.jsonl")


def gpu_available(address: str) -> bool:
    """Whether the Ray cluster (or this machine) has a GPU, asked without starting Ray for nothing."""
    if address:
        import ray

        from spix.pipeline.cluster import init_ray

        init_ray(address)
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def print_epoch(metrics: dict[str, Any]) -> None:
    auc = metrics["val_pair_auc"]
    memory = f" | GPU {metrics['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in metrics else ""
    typer.echo(
        f"epoch {metrics['epoch']:3d} | step {metrics['step']:6d} | loss {metrics['train_loss']:.4f} | "
        f"d+ {metrics['pos_dist']:.2f} d- {metrics['neg_dist']:.2f} | {metrics['images_per_s']:.1f} img/s, "
        f"data wait {100 * metrics['data_wait']:.0f}%{memory} | "
        f"val loss {metrics['val_loss']:.4f} | val pair AUC {'n/a' if math.isnan(auc) else f'{auc:.3f}'}"
    )
