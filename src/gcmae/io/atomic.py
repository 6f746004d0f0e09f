"""Atomic file writes: write to a temporary sibling, then rename over the target."""
from __future__ import annotations

import csv
import io
import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    The file gets the permissions a plain `open` would give (an existing file's mode, else 0666 minus the umask),
    whatever the writer used: some writers (safetensors, mkstemp) create 0600 files that colleagues could not read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    try:
        yield tmp
        if tmp.is_file():  # an existing file keeps its mode, a new one gets what open() would give it
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_csv_atomic(path: str | Path, header: Sequence[object], rows: Iterable[Sequence[object]]) -> Path:
    """A CSV (`csv` module quoting, "\\n" line ends) with `header` then `rows`, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_bytes_atomic(path, buf.getvalue().encode())
