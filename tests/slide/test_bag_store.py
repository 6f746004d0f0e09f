"""BagFeatures: bags held while they fit the budget, the rest re-read from disk, the heap trimmed on a cadence."""
from pathlib import Path

import numpy as np
import torch

from gcmae.slide.bag_store import BagFeatures, BagInfo


def _store(tmp_path: Path, budget_bags: int) -> tuple[BagFeatures, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    store = BagFeatures(budget_bytes=budget_bags * feats[0].nbytes, device=torch.device("cpu"))
    for i, x in enumerate(feats):
        np.savez(tmp_path / f"b{i}.npz", features=x)
        store.add(BagInfo(f"b{i}", tmp_path / f"b{i}.npz", {}, 3), x)
    return store, feats


def test_bags_within_the_budget_are_held_and_the_rest_read_back_identically(tmp_path):
    store, feats = _store(tmp_path, budget_bags=2)
    assert sorted(store.held) == [0, 1] and store.held_bytes == 2 * feats[0].nbytes and len(store) == 4
    for i, x in enumerate(feats):
        assert torch.equal(store[i], torch.from_numpy(x))
    assert store.streamed_reads == 2  # bags 2 and 3 came from disk


def test_the_heap_is_trimmed_every_trim_every_streamed_reads(tmp_path):
    store, _ = _store(tmp_path, budget_bags=0)
    calls = []
    store._trim = calls.append
    for step in range(2 * store.TRIM_EVERY + 3):
        store[step % 4]
    assert calls == [0, 0] and store.streamed_reads == 2 * store.TRIM_EVERY + 3


def test_the_heap_trimmer_is_glibcs_malloc_trim_where_there_is_one():
    import platform

    from gcmae.slide.bag_store import _heap_trimmer

    trim = _heap_trimmer()
    if platform.libc_ver()[0] == "glibc":
        assert trim is not None and trim(0) in (0, 1)  # 1: memory was released, 0: none to release
    else:
        assert trim is None
