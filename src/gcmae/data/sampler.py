"""A shuffling sampler whose order and per-sample augmentation seeds depend only on (seed, epoch)."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from gcmae.seeding import derive_seed


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` for this rank's share of a seeded permutation.

    Like DistributedSampler(drop_last=True): every rank gets `len(dataset) // world_size` items and rank r takes
    positions r, r + world, ... of the permutation. The dataset applies its random transform under `sample_seed`,
    so augmentations are reproducible whatever the worker count, and a resumed run sees the same data.
    """

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if num_items < world_size:
            raise ValueError(f"{num_items} items cannot be split over {world_size} processes")
        self.num_items, self.seed, self.rank, self.world_size, self.shuffle = num_items, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = derive_seed(self.seed, self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        else:
            order = list(range(self.num_items))
        order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        for index in order:
            yield index, derive_seed(epoch_seed, index)
