"""A two-column CSV (key, value) that several processes of one job rewrite in turn, such as a failures list."""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from gcmae.io.atomic import write_csv_atomic
from gcmae.io.paths import claim

LOCK_WAIT_S = 30.0  # then the rewrite proceeds even if the lock is still held: a lost row beats a stuck job


def rewrite_shared_csv(path: Path, header: tuple[str, str], update: Callable[[dict[str, str]], dict[str, str]]) -> None:
    """Under `path`'s lock, read its rows as {key: value} (rows without a key are dropped; no file: {}), pass them
    through `update`, and write the result back sorted by key, atomically."""
    with claim(path.with_name(f".{path.name}.lock"), wait_s=LOCK_WAIT_S):
        rows: dict[str, str] = {}
        if path.exists():
            with open(path, newline="") as fh:
                rows = {r[header[0]]: r.get(header[1]) or "" for r in csv.DictReader(fh) if r.get(header[0])}
        write_csv_atomic(path, header, sorted(update(rows).items()))
