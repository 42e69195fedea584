"""The settings of one training run: what `spix train` and `train_without_ray` are told to do.

Recorded in every checkpoint and in RUN/model.json, so a model says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from spix.trainer.losses import LossConfig


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    out: str
    workers: int = 2
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3  # peak learning rate (AdamW)
    schedule: str = "constant"  # "cosine" (down to 2% of lr at the end of the run) or "constant"
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    weight_decay: float = 1e-4
    preset: str = "paper"
    loss: str = "superpixel"
    pixel_samples: int = 1024
    min_purity: float = 0.5
    crop: int = 224
    gpu: bool = False
    amp: bool = False
    seed: int = 0
    shuffle_window: int = 4  # row groups whose images are shuffled together
    prefetch_batches: int = 4  # ready batches kept ahead of the training step
    deterministic: bool = True  # batches in planned order (same seed and workers -> same run)
    val_max_images: int = 200
    max_failures: int = 3
    max_minutes: float = 0.0  # stop at the end of the first epoch past this much training; 0 = no limit

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.pixel_samples, self.min_purity)
