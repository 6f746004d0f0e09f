"""Exact resume: a run killed with SIGKILL after epoch 1 and resumed ends with the weights of an uninterrupted run."""
import subprocess
import sys
import textwrap

import pytest

from gcmae.train.pretrain import run_pretrain
from tests.train.helpers import assert_states_close, checkpoint_state, tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    sys.path.insert(0, {repo!r})
    from gcmae.train.pretrain import run_pretrain
    from tests.train.helpers import tiny_config

    class KillAtEpoch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # epoch 0's checkpoint is on disk; die without any clean-up
                os.kill(os.getpid(), signal.SIGKILL)

    run_pretrain(tiny_config({data!r}, {out!r}), extra_callbacks=[KillAtEpoch()])
""")


def test_killed_run_resumes_to_identical_weights(small_pcam, tmp_path):
    from tests.conftest import REPO

    reference = run_pretrain(tiny_config(small_pcam, tmp_path / "uninterrupted"))
    assert reference.trainer.current_epoch == 3

    out = tmp_path / "killed"
    script = KILLED_RUN.format(repo=str(REPO), data=str(small_pcam), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state_after_kill = checkpoint_state(out / "checkpoints" / "last.ckpt")
    import torch
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    resumed = run_pretrain(tiny_config(small_pcam, out))
    assert resumed.trainer.current_epoch == 3
    final = checkpoint_state(out / "checkpoints" / "last.ckpt")
    assert_states_close(final, checkpoint_state(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt"))
    assert not all((final[k] == state_after_kill[k]).all() for k in final)  # it did train after resuming
    assert (out / "config.yaml").exists() and (out / "logs" / "metrics.csv").exists()
