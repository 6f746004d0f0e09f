"""Numeric arrays from .npz / .h5 files that may come from anyone: no pickles, checked before they are read.

``load_array_file(path, {"features": (2, "f"), "labels": (1, "iu")})`` returns the named arrays or raises
:class:`ArrayFileError` naming the file and the key. Every array's header (shape, dtype) is checked before its
data is read: object arrays (which need pickle), wrong ranks or dtype kinds, and arrays over ``max_bytes`` are
refused. .npz members are inspected with ``numpy.lib.format`` and read with ``allow_pickle=False``; HDF5 keys
must be plain datasets stored in the file (no external/soft links, external raw storage or virtual datasets).
"""
from __future__ import annotations

import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path

import h5py
import numpy as np

Expected = Mapping[str, tuple[int | None, str]]  # key -> (ndim or None for any, accepted dtype kinds e.g. "iu")
MAX_BYTES = 4 << 30


class ArrayFileError(ValueError):
    """An array file is unreadable, or an array in it is missing or not what was expected."""


def _check(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, want: tuple[int | None, str],
           max_bytes: int) -> None:
    ndim, kinds = want
    where = f"{path}: key {key!r}"
    if dtype.hasobject or dtype.kind == "O":
        raise ArrayFileError(f"{where}: object array (needs pickle to load); refused")
    if dtype.kind not in kinds:
        raise ArrayFileError(f"{where}: dtype {dtype} (kind {dtype.kind!r}); expected kind {' or '.join(kinds)}")
    if ndim is not None and len(shape) != ndim:
        raise ArrayFileError(f"{where}: shape {shape} is {len(shape)}-D; expected {ndim}-D")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > max_bytes:
        raise ArrayFileError(f"{where}: shape {shape} x {dtype} = {nbytes:,} bytes > limit {max_bytes:,}")


def _npy_header(fh: zipfile.ZipExtFile) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def _load_npz(path: Path, expected: Expected, max_bytes: int, optional: Collection[str]) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {name.removesuffix(".npy"): name for name in zf.namelist()}
            expected = {key: want for key, want in expected.items() if key in members or key not in optional}
            for key, want in expected.items():
                if key not in members:
                    raise ArrayFileError(f"{path}: key {key!r} missing (has {sorted(members)})")
                try:
                    with zf.open(members[key]) as fh:
                        shape, dtype = _npy_header(fh)
                except (ValueError, OSError) as err:
                    raise ArrayFileError(f"{path}: key {key!r}: not a valid .npy array ({err})") from None
                _check(path, key, shape, dtype, want, max_bytes)
        with np.load(path, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in expected}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise ArrayFileError(f"{path}: not a valid .npz file ({err})") from None
    except (ValueError, OSError) as err:
        if isinstance(err, ArrayFileError):
            raise
        raise ArrayFileError(f"{path}: cannot read arrays ({err})") from None


def open_h5(path: Path) -> h5py.File:
    """`path` opened read-only; ArrayFileError naming the file when it is not readable HDF5."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ArrayFileError(f"{path}: not a readable HDF5 file ({err})") from None


def read_h5_arrays(fh: h5py.File, path: Path, expected: Expected, max_bytes: int = MAX_BYTES,
                   optional: Collection[str] = ()) -> dict[str, np.ndarray]:
    """The arrays named in `expected` from the open file `fh` (read from `path`), checked as in load_array_file."""
    out = {}
    for key, want in expected.items():
        link = fh.get(key, getlink=True)
        if link is None and key in optional:
            continue
        if link is None:
            raise ArrayFileError(f"{path}: key {key!r} missing (has {sorted(fh.keys())})")
        if not isinstance(link, h5py.HardLink):
            raise ArrayFileError(f"{path}: key {key!r} is a {type(link).__name__}, not data stored here")
        node = fh[key]
        if not isinstance(node, h5py.Dataset):
            raise ArrayFileError(f"{path}: key {key!r} is a {type(node).__name__}, not an array")
        if node.is_virtual or node.external:
            raise ArrayFileError(f"{path}: key {key!r} takes its data from other files; refused")
        _check(path, key, node.shape or (), node.dtype, want, max_bytes)
        try:
            out[key] = np.asarray(node[()])
        except (OSError, ValueError, TypeError) as err:
            raise ArrayFileError(f"{path}: key {key!r}: cannot read data ({err})") from None
    return out


def load_array_file(path: str | Path, expected: Expected, max_bytes: int = MAX_BYTES,
                    optional: Collection[str] = ()) -> dict[str, np.ndarray]:
    """The arrays named in `expected` from a .npz or .h5/.hdf5 file, each checked against (ndim, dtype kinds);
    keys in `optional` that the file lacks are left out of the result instead of raising."""
    path = Path(path)
    if not path.is_file():
        raise ArrayFileError(f"array file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, expected, max_bytes, optional)
    if suffix in (".h5", ".hdf5"):
        with open_h5(path) as fh:
            return read_h5_arrays(fh, path, expected, max_bytes, optional)
    raise ArrayFileError(f"{path}: unsupported array file type {suffix!r} (use .npz, .h5 or .hdf5)")
