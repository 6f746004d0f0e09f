"""DDP correctness: 2 gloo processes with a per-device batch of 4 end with the same weights *and memory bank*
as 1 process with a batch of 8 (the same global batches, thanks to the rank-chunked sampler)."""
import pytest

from gcmae.train.pretrain import run_pretrain
from tests.train.helpers import assert_states_close, checkpoint_state, tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


def test_two_process_ddp_equals_one_process(small_pcam, tmp_path):
    common = ("optim.epochs=2", "loss.num_negatives=24")
    run_pretrain(tiny_config(small_pcam, tmp_path / "single", *common, "data.batch_size=8"))
    run_pretrain(tiny_config(small_pcam, tmp_path / "ddp", *common, "data.batch_size=4", "trainer.devices=2",
                             "trainer.strategy=ddp_spawn"))
    single = checkpoint_state(tmp_path / "single" / "checkpoints" / "last.ckpt")
    ddp = checkpoint_state(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    # the bank was really used and updated: 2 epochs x 32 images touch every entry
    import torch
    assert ddp["model.bank.z"] > 0
    assert torch.allclose(ddp["model.bank.memory"].norm(dim=1), torch.ones(32), atol=1e-5)
    assert_states_close(ddp, single, atol=2e-5)
