"""The feature extractor: shapes for any input size, parameter count, memory formats, input scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spix.trainer.checkpoint import load_model, model_meta, write_final_model
from spix.trainer.config import PRESETS
from spix.trainer.model import IMAGE_MEAN, IMAGE_STD, build_model, normalize_images


def hand_parameter_count(widths: tuple[int, int, int], dim: int, head_kernel: int) -> int:
    """Weights of bias-free convs plus BN (weight, bias) pairs, layer by layer as DESIGN.md lists them."""
    c1, c2, c3 = widths

    def conv_bn(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + 2 * cout

    def stage(c: int, cout: int) -> int:
        return 4 * conv_bn(c, c, 3) + conv_bn(c, cout, 1)  # two residual units of two 3x3 convs

    return conv_bn(3, c1, 1) + stage(c1, c2) + stage(c2, c3) + stage(c3, c3) + conv_bn(c1 + c2 + c3, dim, head_kernel)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (2, 9), (17, 33), (32, 24)])
def test_tiny_output_has_input_size_and_each_image_is_its_own(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", dim=16).eval()
    images = torch.randn(2, 3, *size)
    out = model(images)
    assert out.shape == (2, 16, *size)
    assert torch.isfinite(out).all()
    # In eval mode nothing mixes the images of a batch: changing the second one leaves the first's output.
    changed = images.clone()
    changed[1] = torch.randn(3, *size)
    torch.testing.assert_close(model(changed)[0], out[0])
    assert not torch.allclose(model(changed)[1], out[1])


def numpy_forward_of_one_pixel(state: dict[str, np.ndarray], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """DESIGN.md's network written out in numpy for a 1x1 image, where every 3x3 convolution (zero padding)
    reduces to its centre tap, max-pooling and upsampling to the identity: stem, three stages of two
    residual units and a 1x1 projection, hypercolumn of (stage 1 units, stage 2 units, stage 3 projection),
    head conv + BN. x: (N, 3) pixels -> (N, D) embeddings."""

    def conv(name: str, h: np.ndarray) -> np.ndarray:
        weight = state[f"{name}.weight"]
        return h @ weight[:, :, weight.shape[2] // 2, weight.shape[3] // 2].T

    def bn(name: str, h: np.ndarray) -> np.ndarray:
        scale = state[f"{name}.weight"] / np.sqrt(state[f"{name}.running_var"] + eps)
        return (h - state[f"{name}.running_mean"]) * scale + state[f"{name}.bias"]

    def conv_bn_relu(name: str, h: np.ndarray) -> np.ndarray:
        return np.maximum(bn(f"{name}.1", conv(f"{name}.0", h)), 0.0)

    h = conv_bn_relu("stem", x)
    taps = []
    for stage in range(3):
        for unit in range(2):
            body = f"stages.{stage}.units.{unit}.body"
            h = h + conv_bn_relu(f"{body}.1", conv_bn_relu(f"{body}.0", h))
        projected = conv_bn_relu(f"stages.{stage}.projection", h)
        taps.append(projected if stage == 2 else h)
        h = projected
    return bn("head.1", conv("head.0", np.concatenate(taps, axis=1)))


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_one_pixel_output_equals_the_design_written_out_in_numpy(preset: str) -> None:
    """Wiring (skips, hypercolumn taps and their order, BN in eval mode) against an independent numpy
    computation; the batch-norm statistics are randomised so that each one matters."""
    torch.manual_seed(0)
    model = build_model(preset, dim=16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    model.eval()
    pixels = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    out = model.double()(pixels[:, :, None, None])[:, :, 0, 0]
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    expected = numpy_forward_of_one_pixel(state, pixels.numpy())
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("preset", "widths", "head_kernel", "parameters"),
                         [("paper", (64, 128, 256), 3, 3_724_608), ("cpu", (16, 32, 64), 1, 216_080)])
def test_preset_runs_on_a_small_input_and_has_the_hand_counted_parameters(
    preset: str, widths: tuple[int, int, int], head_kernel: int, parameters: int
) -> None:
    model = build_model(preset)
    count = sum(p.numel() for p in model.parameters())
    assert (PRESETS[preset].widths, PRESETS[preset].head_kernel) == (widths, head_kernel)
    assert count == hand_parameter_count(widths, 128, head_kernel) == parameters
    out = model.eval()(torch.randn(1, 3, 9, 11))
    assert out.shape == (1, 128, 9, 11)


def test_the_cpu_preset_head_is_pointwise_and_the_paper_head_is_not() -> None:
    """A change of the hypercolumn at one pixel changes the output of a 1x1 head at that pixel alone,
    of the paper's 3x3 head in the pixel's 3x3 neighbourhood."""
    torch.manual_seed(0)
    for preset, reach in (("cpu", 1), ("paper", 9)):
        model = build_model(preset, dim=4).eval()
        hypercolumn = torch.zeros(1, sum(PRESETS[preset].widths), 7, 7)
        bumped = hypercolumn.clone()
        bumped[0, :, 3, 3] = 1.0
        changed = (model.head(bumped) - model.head(hypercolumn)).abs().sum(dim=1)[0] > 0
        assert int(changed.sum()) == reach, preset


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_a_saved_model_is_rebuilt_with_its_preset(preset: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(preset, dim=128).eval()
    write_final_model(tmp_path, model.state_dict(), model_meta(preset, 128, {}, [], {}))
    loaded, meta = load_model(tmp_path)
    x = torch.randn(1, 3, 12, 10)
    assert meta["head_kernel"] == PRESETS[preset].head_kernel
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_model_json_from_before_head_kernel_loads_with_the_papers_3x3_head(tmp_path) -> None:
    model = build_model("tiny").eval()
    meta = model_meta("tiny", 128, {}, [], {})
    del meta["head_kernel"]
    write_final_model(tmp_path, model.state_dict(), meta)
    assert load_model(tmp_path)[0].head[0].kernel_size == (3, 3)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match="cpu.*paper.*tiny"):
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
