"""A shuffling sampler whose order and per-sample augmentation seeds depend only on (seed, epoch)."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from gcmae.seeding import derive_seed


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` for this rank's share of a seeded permutation.

    The permutation is cut into global batches of `batch_size * world_size` (an incomplete last one is dropped)
    and rank r takes the r-th contiguous chunk of `batch_size` of each, so a run on W processes sees exactly the
    global batches of a 1-process run with W times the batch. The dataset applies its random transform under
    `sample_seed`, so augmentations are reproducible whatever the worker count, and a resumed run sees the same data.
    """

    def __init__(self, num_items: int, batch_size: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(f"{num_items} items are fewer than one global batch of {self.global_batch}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.num_items // self.global_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = derive_seed(self.seed, self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        else:
            order = list(range(self.num_items))
        for start in range(0, self.num_items - self.global_batch + 1, self.global_batch):
            first = start + self.rank * self.batch_size
            for index in order[first : first + self.batch_size]:
                yield index, derive_seed(epoch_seed, index)
