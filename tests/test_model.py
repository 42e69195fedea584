"""The feature extractor: shapes for any input size, parameter count, memory formats, input scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spix.trainer.model import IMAGE_MEAN, IMAGE_STD, PRESETS, build_model, normalize_images


def hand_parameter_count(widths: tuple[int, int, int], dim: int) -> int:
    """Weights of bias-free convs plus BN (weight, bias) pairs, layer by layer as DESIGN.md lists them."""
    c1, c2, c3 = widths

    def conv_bn(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + 2 * cout

    def stage(c: int, cout: int) -> int:
        return 4 * conv_bn(c, c, 3) + conv_bn(c, cout, 1)  # two residual units of two 3x3 convs

    return conv_bn(3, c1, 1) + stage(c1, c2) + stage(c2, c3) + stage(c3, c3) + conv_bn(c1 + c2 + c3, dim, 3)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (2, 9), (17, 33), (32, 24)])
def test_tiny_output_has_input_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", dim=16).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 16, *size)
    assert torch.isfinite(out).all()


def test_paper_preset_runs_on_a_small_input_and_has_the_hand_counted_parameters() -> None:
    model = build_model("paper")
    count = sum(p.numel() for p in model.parameters())
    print(f"paper preset parameters: {count:,}")
    assert count == hand_parameter_count(PRESETS["paper"], 128) == 3_724_608
    out = model.eval()(torch.randn(1, 3, 9, 11))
    assert out.shape == (1, 128, 9, 11)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match="paper.*tiny"):
        build_model("huge")


def test_channels_last_gives_the_same_output_and_bf16_autocast_stays_close() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", dim=8).eval()
    x = torch.randn(2, 3, 13, 10)
    reference = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x_cl), reference, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model_cl(x_cl)
    assert low.shape == reference.shape
    relative_error = (low.float() - reference).norm() / reference.norm()
    assert relative_error < 0.05


def test_normalize_images_matches_a_numpy_computation() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    out = normalize_images(torch.from_numpy(images))
    expected = ((images / 255.0 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)).transpose(0, 3, 1, 2)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_normalize_images_rejects_other_layouts() -> None:
    with pytest.raises(ValueError):
        normalize_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError):
        normalize_images(torch.zeros(1, 4, 4, 3))
