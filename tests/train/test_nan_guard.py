"""A non-finite loss stops the run with a message naming the step; the last good checkpoint stays loadable."""
import lightning as L
import pytest
import torch

from gcmae import load_checkpoint
from gcmae.train.module import NonFiniteLossError
from gcmae.train.pretrain import run_pretrain
from tests.train.helpers import tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


class PoisonWeights(L.Callback):
    """Injects a NaN into the encoder at the start of epoch 1, batch 2."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            with torch.no_grad():
                pl_module.model.encoder.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(small_pcam, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 2 \(global step 6\)"):
        run_pretrain(tiny_config(small_pcam, tmp_path), extra_callbacks=[PoisonWeights()])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    model, _ = load_checkpoint(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
