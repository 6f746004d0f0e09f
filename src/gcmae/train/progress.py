"""How a pretraining run shows its progress: a bar on a terminal, one log line per epoch anywhere else.

A tqdm bar redirected to a file is one enormous line of carriage returns, so the bar is shown only when stderr is a
terminal; otherwise (and when the bar is turned off) each epoch ends with one line: losses, images/s, time left.
"""
from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

log = logging.getLogger(__name__)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without `v_num` (the run folder's log version, meaningless here)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochLogLine(L.Callback):
    """At the end of every epoch (rank 0): `epoch 3/40: loss 0.812 (loss_rec 0.790, ...), 412 img/s, 6.1 min left`."""

    def __init__(self) -> None:
        self._start = self._last_batch = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0
        self._last_batch = self._start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        self._images += len(batch[0]) * trainer.world_size  # type: ignore[index]
        self._last_batch = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # images/s over the batches only; time left from the whole epoch (a kNN monitor may run at its end)
        training = max(self._last_batch - self._start, 1e-9)
        seconds = max(time.perf_counter() - self._start, 1e-9)
        losses = {k.removeprefix("train/").removesuffix("_epoch"): float(v)
                  for k, v in trainer.callback_metrics.items()
                  if k.startswith("train/loss") and k.endswith("_epoch")}
        total = losses.pop("loss", float("nan"))
        parts = ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
        left = (trainer.max_epochs - trainer.current_epoch - 1) * seconds / 60
        log.info("epoch %d/%d: loss %.4g%s, %.0f img/s, %.1f min left", trainer.current_epoch + 1,
                 trainer.max_epochs, total, f" ({parts})" if parts else "", self._images / training, left)


def progress_callbacks(show_bar: bool) -> tuple[list[L.Callback], bool]:
    """(callbacks, enable_progress_bar): the bar where asked for and stderr is a terminal, else epoch log lines."""
    if show_bar and sys.stderr.isatty():
        return [ProgressBar()], True
    return [EpochLogLine()], False
