"""Training crops pixel by pixel, per-crop superpixel labels against brute force, fixed-width columns, crop tasks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spix.pipeline.shards import iter_rows, list_row_groups, read_manifest
from spix.trainer.config import train_config
from spix.trainer.data import (
    Crop, Window, crop_statistics, crop_task, mosaic_windows, random_window, row_window, stack_crops, trim_slots,
)
from spix.trainer import feed
from spix.trainer.feed import crop_settings, local_batches, rebatch, training_plan

HEIGHT, WIDTH, CROP = 200, 240, 48


class Draws:
    """Stands in for the crop's random generator: uniform() returns low + f * (high - low) for the given
    fractions f in call order (scale, top, left), random() the flip draw (< 0.5 flips)."""

    def __init__(self, scale_fraction: float, top_fraction: float, left_fraction: float, flip: bool):
        self.fractions = [scale_fraction, top_fraction, left_fraction]
        self.flip_draw = 0.25 if flip else 0.75

    def uniform(self, low: float, high: float) -> float:
        return low + self.fractions.pop(0) * (high - low)

    def random(self) -> float:
        return self.flip_draw


def random_crop(rgb: np.ndarray, labels: np.ndarray, superpixels: np.ndarray, crop: int, num_labels: int, rng,
                scale_range: tuple[float, float] = (0.5, 1.5)) -> Crop:
    """A training crop of one image, as crop_task makes it without a mosaic."""
    return crop_statistics(random_window(rgb, labels, superpixels, crop, scale_range, rng), num_labels)


def coordinate_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image whose red is the row and green the column of each pixel, labels = row, superpixel ids = column."""
    rows, cols = np.indices((HEIGHT, WIDTH))
    rgb = np.stack([rows, cols, np.zeros_like(rows)], axis=2).astype(np.uint8)
    return rgb, rows.astype(np.uint8), cols.astype(np.uint16)


def source_columns(crop_superpixels: np.ndarray, present_columns: np.ndarray) -> np.ndarray:
    """Source column of each crop pixel: crop ids are the ranks of the source ids (= columns) present."""
    return present_columns[crop_superpixels]


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
@pytest.mark.parametrize("flip", [False, True])
def test_image_labels_and_superpixels_get_the_same_geometry(scale: float, flip: bool) -> None:
    rgb, labels, superpixels = coordinate_maps()
    fraction = (scale - 0.5) / 1.0  # uniform(0.5, 1.5) -> scale
    crop = random_crop(rgb, labels, superpixels, CROP, 256, Draws(fraction, 0.4, 0.7, flip))
    window = CROP / scale
    top, left = 0.4 * (HEIGHT - window), 0.7 * (WIDTH - window)
    assert crop.rgb.shape == (CROP, CROP, 3) and crop.labels.shape == crop.superpixels.shape == (CROP, CROP)
    # Pixel centre i of the crop samples source row top + (i + 0.5) * window / CROP (continuous coordinates).
    centres = top + (np.arange(CROP) + 0.5) * window / CROP
    expected_rows = np.floor(centres).astype(int)
    np.testing.assert_array_equal(crop.labels[:, 0], expected_rows)
    # The image is the same window, interpolated: its red channel is the row within rounding.
    assert np.abs(crop.rgb[:, :, 0].astype(int) - crop.labels.astype(int)).max() <= 1
    # Columns: the image's green channel and the superpixel ids must agree pixel by pixel, flipped or not.
    present = np.unique(np.floor(left + (np.arange(CROP) + 0.5) * window / CROP).astype(int))
    columns = source_columns(crop.superpixels, present)
    assert np.abs(crop.rgb[:, :, 1].astype(int) - columns).max() <= 1
    steps = np.sign(np.diff(columns[0]))
    sign = -1 if flip else 1  # a flip mirrors the columns, else they increase (repeating when enlarged)
    assert set(steps.tolist()) <= {0, sign} and (steps == sign).sum() == len(present) - 1


@pytest.mark.parametrize("scale", [2.0, 1.0, 0.8])
def test_the_scale_range_bounds_the_rescale(scale: float) -> None:
    """A range of one value rescales by exactly it: the crop spans CROP / scale source rows, whatever the draw."""
    rgb, labels, superpixels = coordinate_maps()
    crop = random_crop(rgb, labels, superpixels, CROP, 256, Draws(0.9, 0.0, 0.0, False), scale_range=(scale, scale))
    rows = crop.labels[:, 0].astype(int)
    assert rows[0] == 0 and rows[-1] == int(CROP / scale) - 1 and len(np.unique(rows)) == min(CROP, round(CROP / scale))


def test_a_flip_mirrors_every_map_and_keeps_the_superpixel_statistics() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (HEIGHT, WIDTH)).astype(np.uint8)
    superpixels = (np.arange(HEIGHT)[:, None] // 10 * 24 + np.arange(WIDTH)[None, :] // 10).astype(np.uint16)
    plain = random_crop(rgb, labels, superpixels, CROP, 5, Draws(0.3, 0.2, 0.9, False))
    mirrored = random_crop(rgb, labels, superpixels, CROP, 5, Draws(0.3, 0.2, 0.9, True))
    np.testing.assert_array_equal(mirrored.rgb, plain.rgb[:, ::-1])
    np.testing.assert_array_equal(mirrored.labels, plain.labels[:, ::-1])
    np.testing.assert_array_equal(mirrored.superpixels, plain.superpixels[:, ::-1])
    np.testing.assert_array_equal(mirrored.sp_label, plain.sp_label)
    np.testing.assert_array_equal(mirrored.sp_purity, plain.sp_purity)


def brute_force_statistics(superpixels: np.ndarray, labels: np.ndarray) -> tuple[list[int], list[float]]:
    majority, purity = [], []
    for sp in range(int(superpixels.max()) + 1):
        values = labels[superpixels == sp].tolist()
        counts = {value: values.count(value) for value in set(values)}
        best = min(counts, key=lambda value: (-counts[value], value))  # ties: the smallest label
        majority.append(best)
        purity.append(counts[best] / len(values))
    return majority, purity


@pytest.mark.parametrize("seed", range(4))
def test_crop_superpixel_labels_and_purity_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    regions = (np.arange(60)[:, None] // 20 * 4 + np.arange(70)[None, :] // 20).astype(np.uint8)  # 3 x 4 regions
    labels = np.where(rng.random((60, 70)) < 0.8, regions % 5, rng.integers(0, 5, (60, 70))).astype(np.uint8)
    superpixels = rng.permutation(200)[(np.arange(60)[:, None] // 6) * 12 + np.arange(70)[None, :] // 6].astype(np.uint16)
    crop = random_crop(rgb, labels, superpixels, 24, 5, np.random.default_rng(seed + 10))
    assert crop.superpixels.max() + 1 == len(crop.sp_label) == len(np.unique(crop.superpixels)), "ids 0..S-1, none empty"
    majority, purity = brute_force_statistics(crop.superpixels, crop.labels)
    np.testing.assert_array_equal(crop.sp_label, majority)
    np.testing.assert_allclose(crop.sp_purity, purity, rtol=1e-6)


def test_purity_describes_the_crop_not_the_whole_image() -> None:
    """One superpixel, left half label 1 and right half label 2 (purity 0.5 in the image); a crop of
    its left part sees label 1 only."""
    rgb = np.zeros((64, 128, 3), np.uint8)
    labels = np.where(np.arange(128)[None, :] < 64, 1, 2).repeat(64, axis=0).astype(np.uint8)
    superpixels = np.zeros((64, 128), np.uint16)
    crop = random_crop(rgb, labels, superpixels, 32, 3, Draws(0.5, 0.5, 0.0, False))  # scale 1, columns 0..31
    assert crop.sp_label.tolist() == [1] and crop.sp_purity.tolist() == [1.0]


def test_an_image_smaller_than_the_crop_is_enlarged_to_it() -> None:
    rgb, labels, superpixels = coordinate_maps()
    crop = random_crop(rgb[:30, :40], labels[:30, :40], superpixels[:30, :40], CROP, 256, np.random.default_rng(0))
    assert crop.rgb.shape == (CROP, CROP, 3)
    assert set(np.unique(crop.labels)) == set(range(30)), "the whole height is in the crop"


def random_windows(count: int, side: int, seed: int) -> list[Window]:
    """Windows of random pixels, labels 0..4 in blocks and superpixels in 4 x 4 blocks with shuffled ids."""
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        labels = rng.integers(0, 5, (side // 8 + 1, side // 8 + 1)).repeat(8, 0).repeat(8, 1)[:side, :side]
        labels = np.where(rng.random((side, side)) < 0.1, 0, labels).astype(np.uint8)
        per_row = -(-side // 4)
        superpixels = rng.permutation(per_row**2)[np.arange(side)[:, None] // 4 * per_row + np.arange(side)[None, :] // 4]
        windows.append(Window(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), labels, superpixels.astype(np.uint16)))
    return windows


@pytest.mark.parametrize(("images_per_crop", "count"), [(2, 4), (3, 4), (2, 2), (3, 2)])
def test_a_mosaic_takes_strip_t_from_the_t_th_next_crop_and_recounts_its_superpixels(images_per_crop: int, count: int) -> None:
    side = 30  # strips of 15 / 10 columns: superpixel blocks of 4 are cut at the strip edges
    crops = random_windows(count, side, seed=images_per_crop)
    mosaics = [crop_statistics(window, 5) for window in mosaic_windows(crops, images_per_crop)]
    width = side // images_per_crop
    assert len(mosaics) == count
    for k, mosaic in enumerate(mosaics):
        for t in range(images_per_crop):
            source, cols = crops[(k + t) % count], slice(t * width, (t + 1) * width)
            np.testing.assert_array_equal(mosaic.rgb[:, cols], source.rgb[:, cols])
            np.testing.assert_array_equal(mosaic.labels[:, cols], source.labels[:, cols])
        # Two pixels share a mosaic superpixel exactly when they are in the same strip and shared one in their crop.
        strip = np.arange(side)[None, :].repeat(side, 0) // width
        source_id = np.stack([crops[(k + t) % count].superpixels for t in range(images_per_crop)])[strip, *np.indices((side, side))]
        pairs = np.unique(np.stack([strip.ravel(), source_id.ravel(), mosaic.superpixels.ravel()]), axis=1)
        assert len(np.unique(pairs[:2], axis=1).T) == len(np.unique(pairs[2])) == pairs.shape[1]
        assert mosaic.superpixels.max() + 1 == len(mosaic.sp_label), "ids 0..S-1, none empty"
        majority, purity = brute_force_statistics(mosaic.superpixels, mosaic.labels)
        np.testing.assert_array_equal(mosaic.sp_label, majority)
        np.testing.assert_allclose(mosaic.sp_purity, purity, rtol=1e-6)


def test_a_mosaic_of_one_image_or_of_one_crop_changes_nothing() -> None:
    windows = random_windows(3, 16, seed=0)
    assert mosaic_windows(windows, 1) == windows
    assert mosaic_windows(windows[:1], 2) == windows[:1]


def test_columns_are_padded_to_the_run_slots_and_overflow_is_refused() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (40, 40)).astype(np.uint8)
    superpixels = (np.arange(40)[:, None] // 8 * 5 + np.arange(40)[None, :] // 8).astype(np.uint16)
    crops = [random_crop(rgb, labels, superpixels, 16, 4, np.random.default_rng(s)) for s in range(3)]
    columns = stack_crops(crops, 30, keys=[7, 3, 9])
    assert columns["key"].tolist() == [7, 3, 9]
    assert columns["images"].shape == (3, 16, 16, 3) and columns["sp_label"].shape == (3, 30)
    for index, crop in enumerate(crops):
        count = len(crop.sp_label)
        np.testing.assert_array_equal(columns["sp_label"][index, :count], crop.sp_label)
        np.testing.assert_array_equal(columns["sp_purity"][index, :count], crop.sp_purity)
        assert not columns["sp_label"][index, count:].any() and not columns["sp_purity"][index, count:].any()
        np.testing.assert_array_equal(columns["superpixels"][index], crop.superpixels)
    with pytest.raises(ValueError, match="slots"):
        stack_crops(crops, max(len(c.sp_label) for c in crops) - 1, keys=[0, 1, 2])
    trimmed = trim_slots(columns)
    most = max(len(c.sp_label) for c in crops)
    assert trimmed["sp_label"].shape == trimmed["sp_purity"].shape == (3, most) and most < 30
    np.testing.assert_array_equal(trimmed["sp_label"], columns["sp_label"][:, :most])
    np.testing.assert_array_equal(trimmed["sp_purity"], columns["sp_purity"][:, :most])
    assert trimmed["images"] is columns["images"] and trimmed["superpixels"] is columns["superpixels"]


def test_the_stream_scheduler_pauses_only_after_a_step_that_did_not_wait(monkeypatch) -> None:
    clock, sleeps = [100.0], []
    monkeypatch.setattr(feed.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(feed.time, "sleep", sleeps.append)
    callback = feed.pause_when_idle()()
    for gap in (0.5, 0.0001, 0.05, feed.IDLE_STEP_S / 2, feed.IDLE_STEP_S * 2):  # seconds since the last step
        clock[0] += gap
        callback.on_execution_step(executor=None)
    assert sleeps == [feed.IDLE_PAUSE_S, feed.IDLE_PAUSE_S], "a pause after each of the two quick steps only"


def test_rebatch_cuts_chunks_of_any_length_into_batches_in_order() -> None:
    chunks = [{"key": np.arange(start, stop)} for start, stop in [(0, 3), (3, 4), (4, 11), (11, 12)]]
    batches = [b["key"].tolist() for b in rebatch(chunks, 4)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


@pytest.mark.slow
def test_crop_tasks_crop_the_planned_rows_in_order(toy_shards) -> None:
    config = train_config(shards=str(toy_shards), out="", crop=32, batch_size=3, workers=1, shuffle_window=2, seed=4, mosaic=1)
    groups = list_row_groups(str(toy_shards), "training")
    settings = crop_settings(config, groups, read_manifest(str(toy_shards)))
    plan = training_plan(config, groups, workers=1)
    rows = list(iter_rows(str(toy_shards), "training"))
    keyed = {settings.first_keys[g] + r: row for g in range(len(groups)) for r in range(groups[g].num_rows)
             for row in [rows[settings.first_keys[g] + r]]}
    tasks = plan.tasks(1, 0)
    planned = [settings.first_keys[g] + r for task in tasks for g, r in zip(task.groups, task.rows)]
    batches = list(local_batches(tasks, settings, 3, torch.device("cpu")))
    assert len(batches) == plan.steps_per_epoch
    first = crop_task(1, tasks[0].groups, tasks[0].rows, settings)
    assert first["key"].tolist() == planned[: len(tasks[0].rows)]
    for index, key in enumerate(first["key"].tolist()):
        expected = crop_statistics(row_window(keyed[key], 32, settings.scale_range, 4, 1), settings.num_labels)
        np.testing.assert_array_equal(first["images"][index], expected.rgb)
        np.testing.assert_array_equal(first["superpixels"][index], expected.superpixels)
    images = torch.cat([b.images for b in batches])
    np.testing.assert_array_equal(images[: len(tasks[0].rows)].numpy(), first["images"])
    for batch in batches:  # slots cut to the batch's largest crop, which is smaller than a whole image
        most = max(len(np.unique(crop)) for crop in batch.superpixels.numpy())
        assert batch.sp_label.shape[1] == most < settings.slots and batch.sp_label[:, most - 1].any()
    mosaics = crop_task(1, tasks[0].groups, tasks[0].rows, dataclasses.replace(settings, mosaic=2))
    assert mosaics["key"].tolist() == first["key"].tolist()
    np.testing.assert_array_equal(mosaics["images"][:, :, :16], first["images"][:, :, :16])
    np.testing.assert_array_equal(mosaics["images"][:, :, 16:], np.roll(first["images"], -1, axis=0)[:, :, 16:])
