"""The training plan: every image once per epoch, equal shares, a new order each epoch, the same order each run."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spix.trainer.plan import TrainingPlan, first_keys

SIZES = (32, 32, 7, 32, 32, 20, 32, 9)  # row groups of several shards, short last groups included


def plan(workers: int = 3, batch_size: int = 5, window: int = 3, seed: int = 0) -> TrainingPlan:
    return TrainingPlan(SIZES, seed, workers, batch_size, window)


def images(p: TrainingPlan, epoch: int, rank: int) -> list[tuple[int, int]]:
    return [(g, r) for task in p.tasks(epoch, rank) for g, r in zip(task.groups, task.rows)]


def test_each_worker_gets_an_equal_whole_number_of_batches_and_no_image_twice() -> None:
    p = plan()
    total = sum(SIZES)  # 196 images over 3 workers: 65 each, rounded down to 13 batches of 5
    assert p.images_per_worker == 65 and p.steps_per_epoch == 13
    seen = Counter()
    for rank in range(3):
        mine = images(p, 0, rank)
        assert len(mine) == 65
        seen.update(mine)
    assert max(seen.values()) == 1
    every = {(g, r) for g, size in enumerate(SIZES) for r in range(size)}
    assert set(seen) <= every and len(every) - len(seen) == total - 3 * 65


def test_the_whole_sequence_is_a_permutation_of_every_image() -> None:
    groups, rows, _ = plan().epoch_sequence(4)
    assert sorted(zip(groups.tolist(), rows.tolist())) == [(g, r) for g, size in enumerate(SIZES) for r in range(size)]


def test_order_changes_with_the_epoch_and_the_seed_but_not_between_calls() -> None:
    p = plan()
    assert images(p, 2, 1) == images(plan(), 2, 1)
    assert images(p, 2, 1) != images(p, 3, 1)
    assert images(p, 2, 1) != images(plan(seed=1), 2, 1)


def test_windows_mix_their_row_groups_and_tasks_read_at_most_one_window() -> None:
    p = plan(workers=1, window=3)
    groups, rows, windows = p.epoch_sequence(0)
    for window in np.unique(windows):
        members = np.unique(groups[windows == window])
        assert 1 <= len(members) <= 3
        order = groups[windows == window]
        if len(members) > 1:  # not laid out group after group: the rows of the window are interleaved
            assert np.count_nonzero(np.diff(order)) > len(members) - 1
    for task in p.tasks(0, 0):
        assert len(set(task.groups)) <= 3
        assert len(task.groups) == len(task.rows)


def test_a_stream_is_its_epochs_back_to_back() -> None:
    p = plan()
    assert list(p.stream(2, 1, 4)) == p.tasks(1, 2) + p.tasks(2, 2) + p.tasks(3, 2)


@pytest.mark.parametrize("workers,batch_size", [(1, 1), (2, 7), (8, 4)])
def test_shares_stay_equal_for_any_worker_count(workers: int, batch_size: int) -> None:
    p = plan(workers=workers, batch_size=batch_size)
    counts = {len(images(p, 0, rank)) for rank in range(workers)}
    assert counts == {p.images_per_worker} and p.images_per_worker % batch_size == 0
    assert sum(SIZES) - workers * p.images_per_worker < workers * batch_size


def test_first_keys_number_rows_over_all_groups() -> None:
    assert first_keys([3, 5, 2]) == (0, 3, 8)
