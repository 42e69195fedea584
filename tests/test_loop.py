"""The epoch loop, the learning-rate schedule, the time budget and validation, without Ray."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from spix.pipeline.shards import iter_samples
from spix.trainer.config import LossConfig, train_config
from spix.trainer.data import Batch
from spix.trainer.losses import superpixel_npair_loss
from spix.trainer.loop import (
    FINAL_LR_FRACTION,
    compute_loss,
    estimate_batch_norm_statistics,
    learning_rate,
    out_of_time,
    planned_steps,
    run_epoch,
    train_step,
    validate,
)
from spix.trainer.model import build_model, normalize_images
from spix.trainer.pooling import superpixel_pool

CONFIG = train_config(shards="", out="", lr=0.01, epochs=10, schedule="cosine", warmup_steps=4, max_minutes=0.0)


def test_warm_up_is_linear_and_the_cosine_ends_at_its_floor() -> None:
    assert [learning_rate(CONFIG, s, 100) for s in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert learning_rate(CONFIG, 4, 100) == pytest.approx(0.01)
    middle = 4 + (100 - 4) / 2
    assert learning_rate(CONFIG, int(middle), 100) == pytest.approx(0.01 * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) / 2))
    assert learning_rate(CONFIG, 100, 100) == pytest.approx(0.01 * FINAL_LR_FRACTION)
    assert learning_rate(CONFIG, 500, 100) == pytest.approx(0.01 * FINAL_LR_FRACTION), "flat after the horizon"
    rates = [learning_rate(CONFIG, s, 100) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:])), "never rises after the warm-up"
    constant = replace(CONFIG, schedule="constant")
    assert learning_rate(constant, 3, 100) == pytest.approx(0.01) and learning_rate(constant, 90, 100) == 0.01


def test_the_schedule_spans_the_epochs_that_fit_in_the_time_budget() -> None:
    assert planned_steps(CONFIG, 7, 2, 2, 20.0) == 70, "no budget: every epoch of --epochs"
    budget = replace(CONFIG, max_minutes=1.0)
    assert planned_steps(budget, 7, 0, 0, 0.0) == 70, "no pace known yet"
    assert planned_steps(budget, 7, 2, 2, 20.0) == 6 * 7, "10 s per epoch, 40 s left: 4 more epochs"
    assert planned_steps(budget, 7, 2, 2, 21.0) == 6 * 7, "the stop comes at the end of the epoch past the limit"
    assert planned_steps(budget, 7, 5, 2, 20.0) == 9 * 7, "a resumed run counts its finished epochs"
    assert planned_steps(replace(budget, max_minutes=100.0), 7, 2, 2, 20.0) == 70, "--epochs still caps it"
    assert not out_of_time(budget, 59.9) and out_of_time(budget, 60.0) and not out_of_time(CONFIG, 1e9)


def tiny_batch(seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    superpixels = torch.arange(16).repeat_interleave(4).reshape(8, 8).repeat(2, 1, 1)
    return Batch(
        images=torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=generator),
        labels=torch.ones(2, 8, 8, dtype=torch.uint8),
        superpixels=superpixels.int(),
        sp_label=(torch.arange(16) % 3 + 1).repeat(2, 1).to(torch.uint8),
        sp_purity=torch.ones(2, 16),
    )


def test_run_epoch_sums_the_step_statistics_and_measures_the_wait_for_data() -> None:
    rates: list[float] = []

    def batches():
        for index in range(5):
            time.sleep(0.05)  # a data path slower than the step
            yield tiny_batch(index)

    def step(model, batch, optimizer) -> torch.Tensor:
        rates.append(optimizer.param_groups[0]["lr"])
        return torch.tensor([1.0, 2.0, float(batch.images.shape[0])])

    model = build_model("tiny", dim=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    totals = run_epoch(model, batches(), 4, optimizer, step, lambda s: 0.1 * s, first_step=10)
    assert (totals.steps, totals.images) == (4, 8)
    assert (totals.loss_sum, totals.pos_dist_sum, totals.neg_dist_sum) == (4.0, 8.0, 8.0)
    assert rates == pytest.approx([1.0, 1.1, 1.2, 1.3]), "the rate of each global step, set before it"
    assert 0.2 <= totals.data_wait_s <= totals.seconds and totals.peak_memory_bytes == 0


def test_the_bf16_step_on_a_cpu_follows_the_float32_step() -> None:
    """spix train runs bf16 autocast on CPUs with native bf16 (model.cpu_runs_bf16); its loss and gradient must
    be the float32 step's up to bf16 rounding (elsewhere the same autocast is emulated, so this runs anywhere).
    The gradient of another batch is the yardstick: bf16 stays far closer to float32 than that."""

    def loss_and_gradient(amp: bool, batch: Batch) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("tiny", dim=8)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients stay readable
        stats = train_step(model, batch, optimizer, LossConfig("superpixel", 0, 0.5), amp=amp)
        return stats[0].item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss32, grad32 = loss_and_gradient(False, tiny_batch(5))
    loss16, grad16 = loss_and_gradient(True, tiny_batch(5))
    _, other_batch = loss_and_gradient(False, tiny_batch(6))
    cosine = torch.nn.functional.cosine_similarity
    assert loss16 == pytest.approx(loss32, rel=0.01)
    assert cosine(grad16, grad32, dim=0) > 0.95 and cosine(other_batch, grad32, dim=0) < 0.5  # measured 0.975, 0.25
    assert (grad16 - grad32).norm() < 0.3 * grad32.norm()  # measured 0.22


@pytest.mark.parametrize("name, pairs", [("superpixel", "image"), ("superpixel-batch", "batch"), ("superpixel-both", "both")])
def test_compute_loss_pairs_across_images_only_in_the_named_variants(name: str, pairs: str) -> None:
    torch.manual_seed(0)
    model, batch = build_model("tiny", dim=4), tiny_batch(3)
    pooled, mask = superpixel_pool(model(normalize_images(batch.images)), batch.superpixels, 16)
    loss, stats = compute_loss(model, batch, LossConfig(name, pixel_samples=0, min_purity=0.5))
    expected, _ = superpixel_npair_loss(pooled, batch.sp_label, batch.sp_purity, mask, 0.5, pairs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # 2 images x 16 superpixels, labels 1..3 (6, 5, 5 per image): ordered same-label pairs
    assert stats["pos_pairs"].item() == (2 * (30 + 20 + 20) if pairs == "image" else 12 * 11 + 10 * 9 + 10 * 9)


@pytest.mark.slow
def test_validation_scores_each_image_the_same_whatever_the_order(toy_shards) -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    samples = list(iter_samples(str(toy_shards), "validation"))
    forward = validate(model, samples, torch.device("cpu"), 0.5, 0, False, max_pairs_per_image=50)
    backward = validate(model, samples[::-1], torch.device("cpu"), 0.5, 0, False, max_pairs_per_image=50)
    assert forward.images == backward.images == len(samples)
    assert math.isclose(forward.loss_sum, backward.loss_sum, rel_tol=1e-9)
    assert sorted(zip(forward.scores, forward.positives)) == sorted(zip(backward.scores, backward.positives))
    np.testing.assert_allclose(forward.moments.second, backward.moments.second, rtol=1e-9)
    assert forward.moments.weight == sum(int(s.sp_area.sum()) for s in samples), "area-weighted: every pixel once"


def test_batch_norm_statistics_become_the_average_of_whole_images() -> None:
    """Against a hand computation: the stem BN's running mean / variance are the mean over images of
    each image's per-channel mean / unbiased variance of the stem convolution's output; every other
    BN is re-estimated too, the momentum and the mode are put back, and no image changes nothing."""
    torch.manual_seed(0)
    model = build_model("tiny").train()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((20, 30), (33, 17), (24, 24))]
    with torch.no_grad():
        for _ in range(3):  # training's running statistics, which the estimate must not mix in
            model(torch.randn(2, 3, 16, 16) * 3 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert estimate_batch_norm_statistics(model, iter([]), torch.device("cpu")) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "no image: nothing changes"
    assert estimate_batch_norm_statistics(model, iter(images), torch.device("cpu")) == 3
    conv, norm = model.stem[0], model.stem[1]
    with torch.no_grad():
        outputs = [conv(normalize_images(torch.from_numpy(image)[None]))[0].flatten(1) for image in images]
    expected_mean = torch.stack([o.mean(dim=1) for o in outputs]).mean(dim=0)
    expected_var = torch.stack([o.var(dim=1, unbiased=True) for o in outputs]).mean(dim=0)
    torch.testing.assert_close(norm.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-4, atol=1e-5)
    head = model.head[1]
    assert not torch.equal(head.running_mean, before["head.1.running_mean"]), "the last BN is re-estimated as well"
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.named_parameters()), "weights untouched"
    model.eval()
    estimate_batch_norm_statistics(model, iter(images[:1]), torch.device("cpu"))
    assert not model.training, "the mode it came in"
