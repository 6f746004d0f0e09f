"""Progress of a long loop: a tqdm bar when stderr is a terminal, otherwise a log line every ~10 %.

A bar redirected to a file is one enormous line of carriage returns (the house rule of gcmae.train.progress), so off
a terminal the loop logs `embedding: 40 % (1234/3085 images), 12 s, ~18 s left` each time it passes a tenth.
"""
from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """`update(n)` as work gets done; a context manager. `bar`: None = a bar exactly when stderr is a terminal;
    `steps`: log lines over the whole loop when there is no bar (0: silent)."""

    def __init__(self, total: int, desc: str, unit: str = "images", bar: bool | None = None,
                 logger: logging.Logger | None = None, steps: int = 10) -> None:
        self.total, self.desc, self.unit, self.steps = max(int(total), 0), desc, unit, steps
        self.logger = logger or log
        self.done, self._logged, self._start = 0, 0, time.perf_counter()
        show = sys.stderr.isatty() if bar is None else bar
        self._bar = tqdm(total=self.total, desc=desc, unit=unit[:-1] if unit.endswith("s") else unit,
                         leave=False) if show else None

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.total or not self.steps:
            return
        done = min(self.done, self.total)
        tenth = done * self.steps // self.total
        if tenth > self._logged:
            self._logged = tenth
            elapsed = time.perf_counter() - self._start
            left = elapsed * (self.total - done) / max(done, 1)
            self.logger.info("%s: %d %% (%d/%d %s), %.0f s%s", self.desc, 100 * done // self.total, done, self.total,
                             self.unit, elapsed, f", ~{left:.0f} s left" if done < self.total else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
