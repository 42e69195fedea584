"""`spix train`: superpixel N-pair metric learning, DDP on Ray Train, from the Parquet shards."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import typer

from spix.cli.config import config_flag, flag, resolve
from spix.cli.ui import fail
from spix.trainer.config import LOSSES, PRESETS, RUNS_DIR, make_train_config

S = "train"
SCHEDULES = ("cosine", "constant")


def train(
    shards: str | None = flag(S, "shards", "Shard folder written by `spix preprocess`."),
    out: str | None = flag(S, "out", "Run folder.", empty="a new folder runs/<date-time>"),
    workers: int | None = flag(S, "workers", "Ray Train workers, one DDP process each."),
    epochs: int | None = flag(S, "epochs", "Epochs (at most, with --max-minutes)."),
    max_minutes: float | None = flag(S, "max_minutes", "Stop at the end of the first epoch that passes this many minutes of training; 0 = no limit."),
    batch_size: int | None = flag(S, "batch_size", "Images per worker per step."),
    lr: float | None = flag(S, "lr", "Peak AdamW learning rate."),
    schedule: str | None = flag(S, "schedule", "Learning-rate schedule after the warm-up: cosine (down to 2% of --lr at the end of the run) or constant."),
    warmup_steps: int | None = flag(S, "warmup_steps", "Steps of linear warm-up from 0 to --lr."),
    preset: str | None = flag(S, "preset", f"Model size (stage widths, head kernel): {', '.join(f'{k} {v.widths} {v.head_kernel}x{v.head_kernel}' for k, v in PRESETS.items())}; or auto: paper on GPUs, cpu on CPUs."),
    loss: str | None = flag(S, "loss", "superpixel (the method: pairs within each training crop), superpixel-batch (the batch as one image: pairs across images too), superpixel-both (a term for pairs within images and one for pairs across a worker's batch; both variants are not DESIGN.md's loss) or pixel (the paper's sampled-pixel baseline)."),
    pixel_samples: int | None = flag(S, "pixel_samples", "Pixels sampled per image by --loss pixel."),
    crop: int | None = flag(S, "crop", "Side of the random square training crop.", empty="224 on GPUs, 128 on CPUs"),
    mosaic: int | None = flag(S, "mosaic", "Images per training crop, side by side in vertical strips: the loss, still over the pairs of one crop, then also compares superpixels of different images."),
    gpu: bool | None = flag(S, "gpu", "One GPU per worker, NCCL; auto: when Ray sees a GPU.", "--gpu/--no-gpu"),
    amp: bool | None = flag(S, "amp", "bf16 autocast on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX, where the step runs ~1.5x faster); --no-amp trains in float32.", "--amp/--no-amp"),
    seed: int | None = flag(S, "seed", "Seed of weights, crops and shuffling."),
    deterministic: bool | None = flag(S, "deterministic", "Batches in planned order, so the same seed and workers give the same run; --nondeterministic takes crops as they finish.", "--deterministic/--nondeterministic"),
    address: str | None = flag(S, "address", "Join a Ray cluster: 'auto' or HOST:PORT.", empty="a local Ray"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    config: Path | None = config_flag(S),
) -> None:
    """Train the feature extractor with the superpixel N-pair loss (DDP on Ray Train: gloo on CPU, NCCL on GPU).

    Every epoch: a checkpoint, and a metrics line (loss, pair distances, images/s and the share of the
    time spent waiting for data, validation loss and pair AUC) printed and appended to
    RUN/metrics.jsonl. At the end RUN/model.pt and RUN/model.json.
    """
    s = resolve(
        S, config,
        dict(shards=shards, out=out, workers=workers, epochs=epochs, max_minutes=max_minutes, batch_size=batch_size,
             lr=lr, schedule=schedule, warmup_steps=warmup_steps, preset=preset, loss=loss,
             pixel_samples=pixel_samples, crop=crop, mosaic=mosaic, gpu=gpu, amp=amp, seed=seed, deterministic=deterministic,
             address=address),
    )
    check_arguments(s, resume)
    s["out"] = s["out"] or str(RUNS_DIR / f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if s["gpu"] == "auto":
        s["gpu"] = gpu_available(s["address"])
    try:
        config_values = make_train_config(s)
    except ValueError as exc:
        fail(str(exc))
    from spix.pipeline.quiet import ray_quieted
    from spix.trainer.distributed import TrainingInputError, read_metrics, run_training

    try:
        with ray_quieted():
            run_dir = run_training(config_values, address=s["address"], resume=resume, on_epoch=print_epoch)
    except TrainingInputError as exc:
        fail(str(exc))
    except RuntimeError as exc:  # the workers' error snippet, after Ray Train's retries ran out
        fail(str(exc))
    last = read_metrics(run_dir)[-1]
    if last.get("stopped_by_time"):
        typer.echo(f"stopped after epoch {last['epoch']}: more than --max-minutes {s['max_minutes']:g} of training")
    typer.echo(f"done: {run_dir}/model.pt and model.json; metrics in {run_dir}/metrics.jsonl")


def check_arguments(s: dict[str, Any], resume: bool) -> None:
    """One clear line for the first bad argument, before torch or Ray is imported."""
    if s["preset"] not in (*PRESETS, "auto"):
        fail(f"--preset must be one of {[*PRESETS, 'auto']}, not {s['preset']!r}")
    if s["loss"] not in LOSSES:
        fail(f"--loss must be one of {list(LOSSES)}, not {s['loss']!r}")
    if s["schedule"] not in SCHEDULES:
        fail(f"--schedule must be one of {list(SCHEDULES)}, not {s['schedule']!r}")
    if min(s["workers"], s["epochs"], s["batch_size"], s["pixel_samples"], s["mosaic"]) < 1 or s["crop"] < 0:
        fail("--workers, --epochs, --batch-size, --pixel-samples and --mosaic must be >= 1, --crop >= 1 (or 0: auto)")
    if s["max_minutes"] < 0 or s["warmup_steps"] < 0 or s["lr"] <= 0:
        fail("--max-minutes and --warmup-steps must be >= 0, --lr > 0")
    if resume and not s["out"]:
        fail("--resume needs --out RUN, the run folder to continue")


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
        + (f" (BN statistics of {metrics['bn_images']} whole training images)" if metrics.get("bn_images") else "")
    )
