"""The paper's feature extractor: a small residual CNN whose three stages form a hypercolumn.

Layout (seed/architecture.png, DESIGN.md "Model"): 1x1 conv stem, three stages of two residual units,
a 1x1 conv-BN-ReLU changing the width after each stage, 3x3/2 max-pooling between stages, the three
stage outputs upsampled to full resolution and concatenated, then a 3x3 conv + BN to `dim` channels (a 1x1 conv in the CPU preset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spix.trainer.config import PRESETS

# ImageNet statistics: the usual input scaling for a CNN trained on natural images.
IMAGE_MEAN = (0.485, 0.456, 0.406)
# The head's BN starts at this scale instead of 1. With unit-variance 128-D embeddings two superpixels
# are ~2 x 128 apart (squared), far past the loss's clamp at 50 where every pair's gradient is zero;
# at 0.1 they start near d ~ 1, where both the pull and the push terms of the loss are active.
HEAD_INIT_SCALE = 0.1
IMAGE_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias: BN supplies it), batch norm, ReLU; 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualUnit(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with an identity skip around them."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels, 3), conv_bn_relu(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Stage(nn.Module):
    """Two residual units at one width, then a 1x1 conv-BN-ReLU to `out_channels`.

    `tap_after_projection` picks the hypercolumn tap: stages 1 and 2 are tapped before their projection
    (which widens the tensor for the next stage), stage 3 after its width-keeping projection, so the
    hypercolumn has c1 + c2 + c3 channels and every layer contributes to the output.
    """

    def __init__(self, channels: int, out_channels: int, tap_after_projection: bool):
        super().__init__()
        self.units = nn.Sequential(ResidualUnit(channels), ResidualUnit(channels))
        self.projection = conv_bn_relu(channels, out_channels, 1)
        self.tap_after_projection = tap_after_projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (hypercolumn tap, input of the next stage)."""
        features = self.units(x)
        projected = self.projection(features)
        return (projected if self.tap_after_projection else features), projected


class FeatureExtractor(nn.Module):
    """Image (B, 3, H, W) -> per-pixel embedding (B, dim, H, W), for any H, W >= 1."""

    def __init__(self, widths: tuple[int, int, int], dim: int, head_kernel: int):
        super().__init__()
        c1, c2, c3 = widths
        self.stem = conv_bn_relu(3, c1, 1)
        self.stages = nn.ModuleList(
            [Stage(c1, c2, False), Stage(c2, c3, False), Stage(c3, c3, True)]
        )
        # padding=1 makes the output ceil(H/2) x ceil(W/2): never empty, whatever the input size.
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.head = nn.Sequential(
            nn.Conv2d(c1 + c2 + c3, dim, head_kernel, padding=head_kernel // 2, bias=False), nn.BatchNorm2d(dim)
        )
        nn.init.constant_(self.head[1].weight, HEAD_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        taps = []
        h = self.stem(x)
        for index, stage in enumerate(self.stages):
            if index > 0:
                h = self.pool(h)
            tap, h = stage(h)
            if tap.shape[-2:] != size:
                tap = F.interpolate(tap, size=size, mode="bilinear", align_corners=False)
            taps.append(tap)
        return self.head(torch.cat(taps, dim=1))


def build_model(preset: str, dim: int = 128) -> FeatureExtractor:
    """The feature extractor of a named preset (see PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return FeatureExtractor(PRESETS[preset].widths, dim, PRESETS[preset].head_kernel)


def cpu_runs_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN's bf16 kernels make
    spix's training step ~1.5x faster than float32 (benchmarks/train_throughput.py (i)); on other CPUs
    bf16 is emulated and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def runs_bf16_at_inference(device: torch.device) -> bool:
    """The one rule for the precision of a trained model at work (validation, the final BN statistics, `spix eval`,
    `spix infer`): bf16 autocast on GPUs, float32 on CPUs, where bf16 only serves to train faster (--amp)."""
    return device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast where asked for; a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def normalize_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 scaled to [0, 1] and standardised per channel.

    The result is a permuted view of an NHWC buffer, i.e. already in channels_last memory format, which the
    convolutions keep through the network: what bf16 convolutions want on a GPU, and on a CPU the training
    step runs 1.5x faster so than NCHW (benchmarks/train_throughput.py (h)).
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        shape = tuple(images_uint8.shape)
        raise ValueError(f"expected a (B, H, W, 3) uint8 tensor, got {images_uint8.dtype} {shape}")
    mean = torch.tensor(IMAGE_MEAN, device=images_uint8.device)
    std = torch.tensor(IMAGE_STD, device=images_uint8.device)
    scaled = (images_uint8.float() / 255.0 - mean) / std
    return scaled.permute(0, 3, 1, 2)
