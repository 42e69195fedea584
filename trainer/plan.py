"""Which images each worker trains on, in which order: a pure function of (seed, epoch, workers).

Shards are read row group by row group (Parquet's unit of reading). Per epoch the row groups are
shuffled, consecutive runs of `window` row groups form a shuffle window whose rows are shuffled
together, and the resulting sequence of every training image is cut into one equal slice per worker
(a whole number of batches each, so every DDP rank takes the same number of steps). A worker's slice
becomes read tasks, one per window it touches: each task reads its window's row groups once and
crops the rows in the planned order. Nothing depends on timing, so the same seed and the same number
of workers give the same batches, whichever machine or process crops them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class ReadTask:
    """One unit of the training data stage: crop these rows of these row groups, in this order."""

    epoch: int
    groups: tuple[int, ...]  # row group index of each image
    rows: tuple[int, ...]  # row within its row group of each image

    def as_item(self) -> dict[str, object]:
        """The task as a Ray Data item (plain values)."""
        return {"epoch": self.epoch, "groups": list(self.groups), "rows": list(self.rows)}


@dataclass(frozen=True)
class TrainingPlan:
    group_sizes: tuple[int, ...]  # rows of each training row group, in shard order
    seed: int
    workers: int
    batch_size: int
    window: int  # row groups shuffled together

    @property
    def images_per_worker(self) -> int:
        """Images each worker trains on per epoch: an equal share, rounded down to whole batches."""
        return sum(self.group_sizes) // self.workers // self.batch_size * self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.images_per_worker // self.batch_size

    def epoch_sequence(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every training image once, in this epoch's order: (row group, row, shuffle window) per image."""
        rng = np.random.default_rng([self.seed, epoch])
        sizes = np.asarray(self.group_sizes, dtype=np.int64)
        order = rng.permutation(len(sizes))
        groups = np.repeat(order, sizes[order])
        starts = np.repeat(np.cumsum(sizes[order]) - sizes[order], sizes[order])
        rows = np.arange(len(groups)) - starts
        windows = np.repeat(np.arange(len(order)) // self.window, sizes[order])
        # Shuffle within each window: sort by (window, random key).
        shuffled = np.lexsort((rng.random(len(groups)), windows))
        return groups[shuffled], rows[shuffled], windows[shuffled]

    def tasks(self, epoch: int, rank: int) -> list[ReadTask]:
        """The read tasks of one worker for one epoch, in training order (one per window it touches)."""
        groups, rows, windows = self.epoch_sequence(epoch)
        mine = slice(rank * self.images_per_worker, (rank + 1) * self.images_per_worker)
        groups, rows, windows = groups[mine], rows[mine], windows[mine]
        cuts = np.flatnonzero(np.diff(windows)) + 1
        return [
            ReadTask(epoch, tuple(int(g) for g in part_groups), tuple(int(r) for r in part_rows))
            for part_groups, part_rows in zip(np.split(groups, cuts), np.split(rows, cuts))
            if len(part_groups)
        ]

    def stream(self, rank: int, first_epoch: int, last_epoch: int) -> Iterator[ReadTask]:
        """The read tasks of epochs first_epoch..last_epoch-1 back to back (made lazily, epoch by epoch)."""
        return (task for epoch in range(first_epoch, last_epoch) for task in self.tasks(epoch, rank))


def first_keys(group_sizes: Sequence[int]) -> tuple[int, ...]:
    """Key of the first row of each row group: rows are numbered over all groups in shard order."""
    return tuple(int(k) for k in np.concatenate([[0], np.cumsum(group_sizes)[:-1]]))
