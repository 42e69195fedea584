"""The settings of one training run: what `spix train` and `train_without_ray` are told to do.

Built from the [train] section of configs/default.toml (the one place a default is written), a user's
`--config` file and flags. Recorded in every checkpoint and in RUN/model.json, so a model says how it
was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from spix.configs import build, defaults


@dataclass(frozen=True)
class Preset:
    """A model size: the widths of the three stages and the kernel of the head conv.

    The paper's head is a 3x3 conv from the hypercolumn to D channels at full resolution; on a CPU it is
    three quarters of a training step of `tiny`. A 1x1 head does a ninth of that work, which buys the CPU
    preset its wider stages (see README, "How good are the features").
    """

    widths: tuple[int, int, int]  # c1, c2, c3
    head_kernel: int  # 3 as drawn in the paper; 1 for the CPU preset


# Torch-free on purpose: the command line checks its arguments against these before importing torch or Ray.
PRESETS: dict[str, Preset] = {
    "paper": Preset((64, 128, 256), 3),
    "tiny": Preset((8, 16, 32), 3),  # the tests' model: the smallest that still learns
    "cpu": Preset((16, 32, 64), 1),
}
RUNS_DIR = Path("runs")  # where a run goes without --out, and where eval and infer look for the newest
GPU_PRESET = "paper"  # what preset "auto" trains on GPUs
CPU_PRESET = "cpu"  # ... and on CPUs: a model that learns within minutes there
GPU_CROP = 224  # what crop 0 ("auto") means on GPUs: the paper's
CPU_CROP = 128  # ... and on CPUs, where a 224 crop costs 4-5x the time of a 128 one (README, "How good are the features")
# The superpixel losses and the pairs each takes (losses.superpixel_npair_loss); then the pixel baseline.
SUPERPIXEL_PAIRS = {"superpixel": "image", "superpixel-batch": "batch", "superpixel-both": "both"}
LOSSES = (*SUPERPIXEL_PAIRS, "pixel")


@dataclass(frozen=True)
class LossConfig:
    name: str  # one of LOSSES
    pixel_samples: int  # pixels sampled per image by the pixel loss
    min_purity: float  # superpixels below this label purity take no part


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # shard folder of `spix preprocess` (path or URI)
    out: str  # run folder
    workers: int  # Ray Train workers, one DDP process each
    epochs: int  # at most this many epochs
    max_minutes: float  # stop at the end of the first epoch past this much training; 0 = no limit
    batch_size: int  # crops per worker per step
    lr: float  # peak learning rate (AdamW)
    schedule: str  # "cosine" (down to 2% of lr at the end of the run) or "constant"
    warmup_steps: int  # linear warm-up from 0 to lr
    weight_decay: float
    preset: str  # model size (PRESETS)
    loss: str  # one of LOSSES
    pixel_samples: int  # pixels sampled per image by the pixel loss
    min_purity: float  # superpixels below this label purity take no part in the loss
    crop: int  # side of the square training crop
    scale_range: tuple[float, ...]  # (min, max) random rescale of a training crop's source window
    mosaic: int  # images per training crop, in vertical strips (data.mosaic_windows); 1 = one image
    gpu: bool  # one GPU per worker, NCCL
    amp: bool  # bf16 autocast (on a GPU, or a CPU with native bf16)
    seed: int  # weights, crops, shuffling, pair sampling
    shuffle_window: int  # row groups whose images are shuffled together
    prefetch_batches: int  # ready batches kept ahead of the training step
    deterministic: bool  # batches in planned order (same seed and workers -> same run)
    val_max_images: int  # validation images scored after every epoch
    bn_images: int  # whole training images the final BN statistics are estimated on; 0 = the crops' running ones
    max_failures: int  # worker losses Ray Train recovers from

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.pixel_samples, self.min_purity)


def make_train_config(values: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from merged settings whose "gpu" is already decided: preset "auto" and crop 0 pick the
    GPU or the CPU choice, and bf16 autocast runs on a GPU or on a CPU with native bf16 (model.cpu_runs_bf16).
    ValueError (SettingsError for a value of the wrong type) when the mosaic has more strips than the crop
    has pixel columns (known only here, once crop 0 is resolved), or for a scale range that is not
    [min, max] with 0 < min <= max, or a negative bn_images."""
    gpu = bool(values["gpu"])
    preset = values["preset"] if values["preset"] != "auto" else (GPU_PRESET if gpu else CPU_PRESET)
    crop = values["crop"] or (GPU_CROP if gpu else CPU_CROP)
    from spix.trainer.model import cpu_runs_bf16  # here, not at the top: reading settings needs no torch

    amp = bool(values["amp"]) and (gpu or cpu_runs_bf16())
    config = build(TrainConfig, {**values, "gpu": gpu, "amp": amp, "preset": preset, "crop": crop})
    if config.mosaic > config.crop:
        raise ValueError(f"--mosaic {config.mosaic} is more strips than the {config.crop}-pixel crop has columns")
    if len(config.scale_range) != 2 or not 0 < config.scale_range[0] <= config.scale_range[1]:
        raise ValueError(f"scale_range must be [min, max] with 0 < min <= max, not {list(config.scale_range)}")
    if config.bn_images < 0:
        raise ValueError(f"bn_images must be >= 0 (0: keep the statistics of the training crops), not {config.bn_images}")
    return config


def train_config(**overrides: Any) -> TrainConfig:
    """The defaults of default.toml's [train] section with `overrides` (for library use and tests);
    gpu "auto" means: this machine's CUDA."""
    values = {**defaults("train"), **overrides}
    if values["gpu"] == "auto":
        import torch

        values["gpu"] = torch.cuda.is_available()
    return make_train_config(values)
