"""Progress: a bar only on a terminal, one log line per epoch otherwise, TensorBoard events beside metrics.csv."""
from __future__ import annotations

import io
import logging
import warnings

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from gcmae.train.pretrain import run_pretrain
from gcmae.train.progress import EpochLogLine, ProgressBar, progress_callbacks
from tests.train.helpers import tiny_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    callbacks, show = progress_callbacks(True)
    assert show and isinstance(callbacks[0], ProgressBar)
    callbacks, show = progress_callbacks(False)
    assert not show and isinstance(callbacks[0], EpochLogLine)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # redirected to a file
    callbacks, show = progress_callbacks(True)
    assert not show and isinstance(callbacks[0], EpochLogLine)


def test_bar_drops_v_num(monkeypatch):
    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, trainer, module: {"loss": 0.5, "v_num": "logs"})
    assert ProgressBar().get_metrics(None, None) == {"loss": 0.5}


@pytest.mark.slow
def test_short_run_logs_each_epoch_without_warnings(small_pcam, tmp_path, caplog):
    # 32 images in batches of 8: 4 batches an epoch, fewer than the logging interval asked for
    cfg = tiny_config(small_pcam, tmp_path / "run", "optim.epochs=2", "trainer.log_every_n_steps=50",
                      "trainer.progress_bar=true")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="gcmae.train.progress"):
        warnings.simplefilter("always")
        run_pretrain(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "gcmae.train.progress"]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and lines[1].startswith("epoch 2/2: loss ")
    assert "loss_rec" in lines[0] and "img/s" in lines[0] and "min left" in lines[0]
    assert not [w for w in caught if "log_every_n_steps" in str(w.message)]
    assert list((tmp_path / "run" / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "logs" / "metrics.csv").exists()
