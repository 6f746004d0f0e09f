"""Which checkpoint a run resumes from, and what a fresh start in an old folder does to its kept/ checkpoints."""
from __future__ import annotations

import torch

from gcmae.train.callbacks import checkpoint_to_resume


def _old_run_folder(tmp_path):
    kept = tmp_path / "checkpoints" / "kept"
    kept.mkdir(parents=True)
    torch.save({"epoch": 4}, tmp_path / "checkpoints" / "last.ckpt")
    (kept / "epoch004.ckpt").write_bytes(b"the old run's epoch 4")
    (kept / ".epoch009.ckpt.123.abcd1234.tmp").write_bytes(b"half a file")
    return kept


def test_a_fresh_start_sets_the_old_kept_checkpoints_aside_and_drops_temp_files(tmp_path):
    kept = _old_run_folder(tmp_path)
    assert checkpoint_to_resume(tmp_path, resume=False) is None
    assert not kept.exists()
    (aside,) = (tmp_path / "checkpoints").glob("kept-before-*")
    assert [p.name for p in aside.iterdir()] == ["epoch004.ckpt"]
    assert (aside / "epoch004.ckpt").read_bytes() == b"the old run's epoch 4"


def test_resuming_leaves_the_kept_checkpoints_where_they_are(tmp_path):
    kept = _old_run_folder(tmp_path)
    assert checkpoint_to_resume(tmp_path, resume=True) == tmp_path / "checkpoints" / "last.ckpt"
    assert [p.name for p in kept.iterdir()] == ["epoch004.ckpt"]  # the temp file is gone
    assert not list((tmp_path / "checkpoints").glob("kept-before-*"))
