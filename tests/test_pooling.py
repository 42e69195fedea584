"""Superpixel pooling against a per-superpixel Python mean, padding, gradients, bad ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spix.trainer.pooling import superpixel_pool

COUNTS = (7, 12, 3)  # a different S per image; image 1 leaves ids 10 and 11 without pixels


def make_batch(dim: int = 5, height: int = 9, width: int = 11) -> tuple[torch.Tensor, torch.Tensor, int]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(COUNTS), dim, height, width, generator=generator)
    maps = []
    for count in COUNTS:
        used = count - 2 if count == 12 else count
        ids = torch.randint(0, used, (height, width), generator=generator)
        ids.view(-1)[:used] = torch.arange(used)  # every id below `used` has a pixel
        maps.append(ids)
    return features, torch.stack(maps), max(COUNTS)


def naive_pool(features: torch.Tensor, superpixels: torch.Tensor, slots: int) -> tuple[np.ndarray, np.ndarray]:
    f, sp = features.double().numpy(), superpixels.numpy()
    pooled = np.zeros((len(f), slots, f.shape[1]))
    present = np.zeros(pooled.shape[:2], dtype=bool)
    for b in range(len(f)):
        for s in range(slots):
            inside = sp[b] == s
            if inside.any():
                pooled[b, s] = f[b][:, inside].mean(axis=1)
                present[b, s] = True
    return pooled, present


@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_matches_naive_mean_with_padding(channels_last: bool) -> None:
    features, superpixels, slots = make_batch()
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    pooled, mask = superpixel_pool(features, superpixels, slots)
    expected, present = naive_pool(features, superpixels, slots)
    assert pooled.shape == (3, 12, 5) and pooled.dtype == torch.float32
    assert np.abs(pooled.numpy() - expected).max() < 1e-5
    np.testing.assert_array_equal(mask.numpy(), present)
    assert mask.sum(dim=1).tolist() == [7, 10, 3]
    assert (pooled[~mask] == 0).all()


def test_pool_accumulates_bf16_features_in_float32() -> None:
    features, superpixels, slots = make_batch()
    pooled, _ = superpixel_pool(features.bfloat16(), superpixels, slots)
    expected, _ = naive_pool(features.bfloat16().float(), superpixels, slots)
    assert pooled.dtype == torch.float32
    assert np.abs(pooled.numpy() - expected).max() < 1e-5


def test_gradient_of_each_pixel_is_one_over_its_superpixel_area() -> None:
    features, superpixels, slots = make_batch()
    features.requires_grad_(True)
    pooled, _ = superpixel_pool(features, superpixels, slots)
    pooled.sum().backward()
    areas = torch.stack([torch.bincount(m.view(-1), minlength=12) for m in superpixels])
    pixel_area = torch.gather(areas, 1, superpixels.view(3, -1)).view_as(superpixels).double()
    expected = (1.0 / pixel_area)[:, None].expand_as(features)
    torch.testing.assert_close(features.grad.double(), expected)


@pytest.mark.parametrize("bad_id", [-1, 12])
def test_ids_outside_the_slots_are_rejected(bad_id: int) -> None:
    features, superpixels, slots = make_batch()
    superpixels[0, 0, 0] = bad_id  # 12 slots per image: id 12 of image 0 would fall into image 1's slot 0
    with pytest.raises(ValueError, match="superpixel ids"):
        superpixel_pool(features, superpixels, slots)
