"""The inference step: the model on a batch of images -> embeddings, pictures and soft layers, ready to write.

A plain object (no Ray): a model actor of `spix infer` holds one, and so can a script on a GPU box or a test.
Same-size images share one forward pass (no padding, which would change the features near the borders and
make them depend on the batch). Everything after the forward pass stays on the features' device, in float32
(principal components, both guided filters, k-means and soft layers, quantisation), and each output crosses
to the host once per batch, already in its final dtype (uint8 pictures and layers, float16 dense features).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from spix.inference.basis import FeatureBasis, image_basis
from spix.configs import build, defaults
from spix.inference.filters import GuidedFilter, smoothing_radius
from spix.inference.pictures import (
    distinct_colours,
    feature_picture,
    layer_composite,
    quantise_layers,
    soft_layers,
    soft_memberships,
    superpixel_areas,
)
from spix.trainer.embedding import embed_batch
from spix.trainer.probe import LinearProbe


@dataclass(frozen=True)
class StepConfig:
    """What the step makes. `kinds` are output kinds (settings.OUTPUT_KINDS, plus "dense" and "labels")."""

    kinds: tuple[str, ...]
    soft_layers: int
    smooth_radius: int  # 0 = smoothing_radius(H, W)
    feature_eps: float
    layer_eps: float
    seed: int
    pca: str  # "run": the step's basis for every image; "image": each image's own


def step_config(kinds: tuple[str, ...], **settings: Any) -> StepConfig:
    """A StepConfig from `settings` (e.g. an InferParams as a dict), the [infer] defaults of default.toml for the rest."""
    return build(StepConfig, {**defaults("infer"), **settings, "kinds": kinds})


@dataclass
class ImageResult:
    """One image's arrays, on the host; a field is None when its output was not asked for."""

    embeddings: np.ndarray  # (S, D) float32 superpixel means
    features: np.ndarray | None = None  # (H, W, 3) uint8 dominant-features picture
    layers: np.ndarray | None = None  # (K, H, W) uint8, summing to 255 at every pixel
    composite: np.ndarray | None = None  # (H, W, 3) uint8 colour mix of the layers
    dense: np.ndarray | None = None  # (H, W, D) float16 per-pixel embeddings
    classes: np.ndarray | None = None  # (S,) uint8 class id per superpixel (the linear probe's)
    forward_s: float = 0.0  # this image's share of its forward pass (and pooling)
    post_s: float = 0.0  # this image's share of the post-processing, copies to the host included


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to `count` (None: unchanged) within the block.

    The post-processing is a long chain of memory-bound operations of a few milliseconds each. Each one split
    over threads waits for its slowest thread, and on cores shared with other work (the writing tasks of the
    same job) that is a descheduled one: measured on the 2-core VM with a busy neighbour, 0.28 s per 683 x 512
    image with 1 thread against 3.1 s with 2. The forward pass, a few large convolutions, keeps all its threads.
    """
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def synchronize(device: torch.device) -> None:
    """Wait for the device, so a stage's time is its own (kernels run asynchronously on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class InferenceStep:
    """The model and everything needed to turn images into outputs, loaded once (per actor)."""

    def __init__(
        self, model: nn.Module, device: torch.device, config: StepConfig, basis: FeatureBasis | None = None,
        probe: LinearProbe | None = None, amp: bool = False, max_stack: int | None = None,
        post_threads: int | None = None,
    ):
        """`post_threads`: torch threads for everything after the forward pass (None: as for the forward).
        On CPUs shared with other work, 1 is far faster for these many small operations (see `torch_threads`)."""
        if "features" in config.kinds and config.pca == "run" and basis is None:
            raise ValueError("the feature picture with a run-wide basis needs the basis")
        if "labels" in config.kinds and probe is None:
            raise ValueError("label maps need the linear probe")
        self.model = model.eval()
        self.device = device
        self.config = config
        self.basis = basis.tensors(device) if basis is not None and config.pca == "run" else None
        self.probe = probe
        self.amp = amp
        self.max_stack = max_stack  # images per forward pass; None = all same-size images of the call
        self.post_threads = post_threads
        self.colours = torch.from_numpy(distinct_colours(config.soft_layers)).to(device)

    def __call__(self, images: list[np.ndarray], superpixels: list[np.ndarray]) -> list[ImageResult]:
        """Images (H, W, 3) uint8 and their superpixel maps (H, W), ids 0..S-1; any mix of sizes."""
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, rgb in enumerate(images):
            by_size[rgb.shape].append(index)
        results: list[ImageResult | None] = [None] * len(images)
        for group in by_size.values():
            stack = self.max_stack or len(group)
            for first in range(0, len(group), stack):
                indices = group[first : first + stack]
                for index, result in zip(indices, self.run_stack([images[i] for i in indices], [superpixels[i] for i in indices])):
                    results[index] = result
        return results

    @torch.no_grad()
    def run_stack(self, images: list[np.ndarray], superpixels: list[np.ndarray]) -> list[ImageResult]:
        """Same-size images: one forward pass, then every output for all of them at once."""
        start = time.perf_counter()
        counts = [int(sp.max()) + 1 for sp in superpixels]  # host maps: no device round trip for the slot count
        rgb = torch.from_numpy(np.stack(images)).to(self.device)
        ids = torch.from_numpy(np.stack(superpixels).astype(np.int32)).to(self.device).long()  # half the upload of int64
        features, pooled = embed_batch(self.model, rgb, ids, max(counts), self.amp)
        synchronize(self.device)
        forward_end = time.perf_counter()
        embeddings = pooled.cpu().numpy()
        results = [ImageResult(embeddings=embeddings[i, :count]) for i, count in enumerate(counts)]
        with torch_threads(self.post_threads):
            self.post_process(results, rgb, ids, features, pooled, superpixels)
        end = time.perf_counter()
        for result in results:
            result.forward_s = (forward_end - start) / len(results)
            result.post_s = (end - forward_end) / len(results)
        return results

    def post_process(
        self, results: list[ImageResult], rgb: torch.Tensor, ids: torch.Tensor, features: torch.Tensor,
        pooled: torch.Tensor, superpixels: list[np.ndarray],
    ) -> None:
        """Fill in every output asked for, on the device, one copy to the host per output."""
        kinds = self.config.kinds
        if "features" in kinds or "soft" in kinds:
            radius = self.config.smooth_radius or smoothing_radius(*rgb.shape[1:3])
            smooth = GuidedFilter(rgb.permute(0, 3, 1, 2).float() / 255.0, radius)
        if "features" in kinds:
            for result, picture in zip(results, self.feature_pictures(features, smooth, results, superpixels).cpu().numpy()):
                result.features = picture
        if "soft" in kinds:
            areas = superpixel_areas(ids, pooled.shape[1])
            memberships = soft_memberships(pooled, areas, self.config.soft_layers, self.config.seed)
            layers = soft_layers(memberships, ids, smooth, self.config.layer_eps)
            quantised = quantise_layers(layers).cpu().numpy()
            composites = layer_composite(layers, self.colours).cpu().numpy()
            for result, q, composite in zip(results, quantised, composites):
                result.layers, result.composite = q, composite
        if "dense" in kinds:
            for result, dense in zip(results, features.permute(0, 2, 3, 1).half().cpu().numpy()):
                result.dense = dense
        if "labels" in kinds:
            for result in results:
                result.classes = self.probe.predict(result.embeddings).astype(np.uint8)

    def feature_pictures(
        self, features: torch.Tensor, smooth: GuidedFilter, results: list[ImageResult], superpixels: list[np.ndarray]
    ) -> torch.Tensor:
        """(B, H, W, 3) uint8 pictures with the run's basis, or each image's own (`pca="image"`)."""
        if self.basis is not None:
            mean, components, std = (t.expand(len(results), *t.shape) for t in self.basis)
        else:
            own = [image_basis(r.embeddings, np.bincount(sp.ravel(), minlength=len(r.embeddings))) for r, sp in zip(results, superpixels)]
            mean, components, std = (torch.stack(parts) for parts in zip(*(b.tensors(self.device) for b in own)))
        return feature_picture(features, smooth, mean, components, std, self.config.feature_eps)
