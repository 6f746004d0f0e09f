"""Loading bags: coordinates are optional, but coordinates that are present are checked, wherever the file lives."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from gcmae.io.arrays import ArrayFileError
from gcmae.slide.bags import load_bag


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_coords_are_optional_but_checked(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "missing"  # a path naming "missing" must not hide a bad coords array
    folder.mkdir()
    feats = np.ones((3, 2), dtype=np.float32)

    def write(name: str, **arrays: np.ndarray) -> Path:
        path = folder / f"{name}{suffix}"
        if suffix == ".npz":
            np.savez(path, **arrays)
        else:
            with h5py.File(path, "w") as fh:
                for key, value in arrays.items():
                    fh.create_dataset(key, data=value)
        return path

    assert load_bag(write("plain", features=feats)).coords is None
    np.testing.assert_array_equal(load_bag(write("xy", features=feats, coords=np.zeros((3, 2), int))).coords, 0)
    with pytest.raises(ArrayFileError, match=r"key 'coords': dtype float64"):
        load_bag(write("bad", features=feats, coords=np.zeros((3, 2))))
    with pytest.raises(ArrayFileError, match=r"key 'features' missing"):
        load_bag(write("nofeat", coords=np.zeros((3, 2), int)))
