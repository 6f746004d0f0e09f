"""The training bags of `gcmae mil train`: held in memory while they fit in a budget, streamed from disk beyond it."""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcmae.slide.bags import load_bag


@dataclass
class BagInfo:
    """What training needs of a bag besides its features (which `BagFeatures` holds or re-reads)."""

    slide_id: str
    path: Path
    attrs: dict[str, Any]
    dim: int


def _heap_trimmer() -> Callable[[int], object] | None:
    """glibc's malloc_trim, where there is one (None elsewhere, e.g. macOS or musl)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int  # int malloc_trim(size_t pad)
    return trim


class BagFeatures:
    """The training bags' features by index, in the order they were added: each bag is held in memory if it still
    fits in what is left of `budget_bytes`, the others are read from their files at every use, so a cohort larger
    than memory still trains."""

    # glibc keeps the heap pages of freed multi-MB arrays: without a trim, streaming 200 -> 400 bags of 2000 x 384
    # grew peak memory 185 -> 345 MB; trimming every 16 reads keeps it flat (benchmarks/mil_memory.py)
    TRIM_EVERY = 16

    def __init__(self, budget_bytes: int, device: torch.device) -> None:
        self.budget_bytes, self.device = budget_bytes, device
        self.infos: list[BagInfo] = []
        self.held: dict[int, torch.Tensor] = {}
        self.held_bytes = 0
        self.streamed_reads = 0
        self._trim = _heap_trimmer()

    def add(self, info: BagInfo, features: np.ndarray) -> None:
        """Append a bag; its features (just read while checking the bags) are kept if they fit in the budget."""
        if self.held_bytes + features.nbytes <= self.budget_bytes:
            self.held[len(self.infos)] = torch.from_numpy(features).to(self.device)
            self.held_bytes += features.nbytes
        self.infos.append(info)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self.held:
            return self.held[i]
        info = self.infos[i]
        self.streamed_reads += 1
        if self._trim is not None and self.streamed_reads % self.TRIM_EVERY == 0:
            self._trim(0)
        return torch.from_numpy(load_bag(info.path, slide_id=info.slide_id).features).to(self.device)

    def __len__(self) -> int:
        return len(self.infos)
