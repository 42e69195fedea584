"""The plain PyTorch training step, epoch loop and validation pass (no Ray inside).

Ray Train's per-worker function and `train_without_ray` both run `run_epoch`; a test or a benchmark
can call any of these directly. The step leaves its statistics on the device: an epoch reads them back
once, so the host never waits for the GPU between steps.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from spix.pipeline.shards import Sample, list_row_groups, read_manifest
from spix.trainer.data import Batch
from spix.trainer.embedding import EmbeddingMoments, embed_superpixels
from spix.trainer.feed import crop_settings, local_batches, training_plan, worker_samples
from spix.trainer.config import SUPERPIXEL_PAIRS, LossConfig, TrainConfig
from spix.trainer.losses import pixel_npair_loss, superpixel_npair_loss
from spix.trainer.metrics import image_pair_scores
from spix.trainer.model import autocast, build_model, normalize_images, runs_bf16_at_inference
from spix.trainer.pooling import superpixel_pool

StepFn = Callable[[nn.Module, Batch, torch.optim.Optimizer], torch.Tensor]
FINAL_LR_FRACTION = 0.02  # where the cosine schedule ends, relative to the peak rate
TRAINING_PAIRS_PER_IMAGE = 2000  # superpixel pairs per image behind the pair AUC printed after each epoch


def compute_loss(model: nn.Module, batch: Batch, loss: LossConfig, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Forward the batch and apply the superpixel loss (within images or across the batch) or the
    pixel-sampled baseline."""
    features = model(normalize_images(batch.images))
    if loss.name == "pixel":
        return pixel_npair_loss(features, batch.labels, loss.pixel_samples, generator)
    pooled, mask = superpixel_pool(features, batch.superpixels, batch.sp_label.shape[1])
    return superpixel_npair_loss(
        pooled, batch.sp_label, batch.sp_purity, mask, loss.min_purity, pairs=SUPERPIXEL_PAIRS[loss.name]
    )


def train_step(
    model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, loss: LossConfig, amp: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One optimisation step; returns (loss, mean positive pair distance, mean negative pair distance)
    as a float32 tensor on the batch's device, without waiting for it."""
    model.train()
    with autocast(batch.images.device, amp):
        value, stats = compute_loss(model, batch, loss, generator)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return torch.stack([value.detach().float(), stats["pos_dist"].float(), stats["neg_dist"].float()])


def step_function(config: TrainConfig, device: torch.device, rank: int = 0) -> StepFn:
    """The run's training step: its loss, autocast and (for the pixel loss) a seeded pixel sampler."""
    generator = torch.Generator(device=device).manual_seed(config.seed + rank)
    return functools.partial(train_step, loss=config.loss_config(), amp=config.amp, generator=generator)


@dataclass
class EpochTotals:
    """One worker's epoch: sums of the step statistics and where the time went."""

    steps: int
    images: int
    loss_sum: float
    pos_dist_sum: float
    neg_dist_sum: float
    seconds: float  # wall time of the epoch's steps
    data_wait_s: float  # of which waiting for the next batch
    peak_memory_bytes: int  # peak GPU memory of the epoch (0 on CPU)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def run_epoch(
    model: nn.Module, batches: Iterator[Batch], steps: int, optimizer: torch.optim.Optimizer, step: StepFn,
    learning_rate: Callable[[int], float] | None = None, first_step: int = 0,
) -> EpochTotals:
    """`steps` training steps on the next batches; the step statistics are read back once, at the end.

    `learning_rate(global step)` sets the rate before each step.
    """
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sums = torch.zeros(3, device=device)
    images, waited = 0, 0.0
    start = time.perf_counter()
    for index in range(steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        if learning_rate is not None:
            set_learning_rate(optimizer, learning_rate(first_step + index))
        sums += step(model, batch, optimizer)
        images += batch.images.shape[0]
    loss, pos, neg = sums.tolist()  # the epoch's one wait for the device
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return EpochTotals(steps, images, loss, pos, neg, time.perf_counter() - start, waited, peak)


def learning_rate(config: TrainConfig, step: int, horizon: int) -> float:
    """The rate of a global step: linear warm-up over `warmup_steps`, then constant, or a cosine from `lr`
    down to FINAL_LR_FRACTION of it at step `horizon` (and flat after it)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, horizon - config.warmup_steps))
    return config.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def planned_steps(config: TrainConfig, steps_per_epoch: int, finished_epochs: int, session_epochs: int, session_seconds: float) -> int:
    """The step the schedule ends at: every epoch up to --epochs; with --max-minutes, the epochs that
    still fit at this session's pace (the stop comes at the end of the first epoch past the limit)."""
    epochs = config.epochs
    if config.max_minutes > 0 and session_epochs > 0:
        pace = session_seconds / session_epochs
        epochs = min(epochs, finished_epochs + max(0, math.ceil((60 * config.max_minutes - session_seconds) / pace)))
    return epochs * steps_per_epoch


def out_of_time(config: TrainConfig, session_seconds: float) -> bool:
    return config.max_minutes > 0 and session_seconds >= 60 * config.max_minutes


def pair_rng(seed: int, image_id: str) -> np.random.Generator:
    """Pair sampling of one validation image: the same pairs whichever worker scores it."""
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


@dataclass
class ValidationPart:
    """One worker's share of a validation pass, to be merged across workers before the AUC."""

    loss_sum: float
    images: int
    scores: np.ndarray  # -d_ij of sampled superpixel pairs
    positives: np.ndarray  # same-label flags of those pairs
    moments: EmbeddingMoments | None = field(default=None)  # area-weighted embedding moments (feature basis)


def validate(
    model: nn.Module, samples: Iterable[Sample], device: torch.device, min_purity: float, seed: int, amp: bool,
    max_pairs_per_image: int = TRAINING_PAIRS_PER_IMAGE,
) -> ValidationPart:
    """Superpixel loss and pair scores on full validation images (the shard's own superpixel labels)."""
    loss_sum, images, scores, positives = 0.0, 0, [], []
    moments = None
    for sample in samples:
        emb = embed_superpixels(model, sample.rgb, sample.superpixels, device, amp)
        valid = sample.sp_purity >= min_purity
        value, _ = superpixel_npair_loss(
            torch.from_numpy(emb)[None], torch.from_numpy(sample.sp_label.astype(np.int64))[None],
            torch.tensor(sample.sp_purity)[None], torch.ones(1, len(emb), dtype=torch.bool), min_purity,  # a copy: Arrow's arrays are read-only
        )
        s, p = image_pair_scores(emb, sample.sp_label, valid, max_pairs_per_image, pair_rng(seed, sample.image_id))
        moments = moments or EmbeddingMoments(emb.shape[1])
        moments.add(emb, sample.sp_area)
        loss_sum, images = loss_sum + float(value), images + 1
        scores.append(s)
        positives.append(p)
    return ValidationPart(
        loss_sum, images,
        np.concatenate(scores) if scores else np.zeros(0), np.concatenate(positives) if positives else np.zeros(0, bool),
        moments,
    )


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of the model (their running statistics are what eval mode normalises with)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def estimate_batch_norm_statistics(model: nn.Module, images: Iterable[np.ndarray], device: torch.device, amp: bool = False) -> int:
    """Re-estimate every BatchNorm's running mean and variance on whole images, one forward pass each.

    Why: the running statistics are gathered on training crops (by default mosaics of four images'
    strips, rescaled), while validation, `spix eval` and `spix infer` run the model in eval mode on whole
    images. The new statistics are the plain average of the per-image ones (momentum None). Training is
    unaffected (train mode normalises with each batch's own statistics). Returns the images used; with
    none, the statistics are left as they were.
    """
    norms = batch_norm_layers(model)
    momenta, was_training, count = [m.momentum for m in norms], model.training, 0
    for rgb in images:
        if count == 0:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
            model.train()
        with autocast(device, amp):
            model(normalize_images(torch.from_numpy(np.array(rgb, dtype=np.uint8))[None].to(device)))
        count += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    return count


def estimate_on_training_images(model: nn.Module, config: TrainConfig, device: torch.device, rank: int = 0, workers: int = 1) -> int:
    """The final model's BN statistics from this worker's share of the first `config.bn_images` training
    images (estimate_batch_norm_statistics); the one choice of images for `spix train` and train_without_ray.
    The statistics are taken at the precision the model is used at afterwards (`runs_bf16_at_inference`:
    float32 on a CPU even if training ran bf16). Returns the images this worker used."""
    shares = worker_samples(config.shards, "training", config.bn_images, rank, workers)
    return estimate_batch_norm_statistics(model, (sample.rgb for sample in shares), device, runs_bf16_at_inference(device))


def train_without_ray(config: TrainConfig, device: str = "cpu") -> tuple[nn.Module, dict[str, float]]:
    """Single-process training on a shard folder: the path for a machine without Ray, tests and benchmarks.

    The same plan, crops, step, schedule and epoch loop as `spix train` with one worker, the crops made in
    this process; `config.max_minutes` ends it the same way, and the BN statistics are re-estimated on
    `config.bn_images` whole training images at the end, as there. Returns the model and counters (epochs,
    steps, seconds).
    """
    torch.manual_seed(config.seed)
    device = torch.device(device)
    manifest = read_manifest(config.shards)
    groups = list_row_groups(config.shards, "training")
    plan = training_plan(config, groups, workers=1)
    settings = crop_settings(config, groups, manifest)
    model = build_model(config.preset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = step_function(config, device)
    batches = local_batches(plan.stream(0, 0, config.epochs), settings, config.batch_size, device)
    horizon, steps, epochs = config.epochs * plan.steps_per_epoch, 0, 0
    start = time.perf_counter()
    while epochs < config.epochs:
        run_epoch(model, batches, plan.steps_per_epoch, optimizer, step, lambda s: learning_rate(config, s, horizon), steps)
        steps, epochs = steps + plan.steps_per_epoch, epochs + 1
        seconds = time.perf_counter() - start
        if out_of_time(config, seconds):
            break
        horizon = planned_steps(config, plan.steps_per_epoch, epochs, epochs, seconds)
    estimate_on_training_images(model, config, device)
    return model, {"epochs": epochs, "steps": steps, "seconds": time.perf_counter() - start}
