"""A run SIGKILLed half-way through writing last.ckpt keeps the previous epoch's checkpoint intact, and
`gcmae pretrain` resumes from it to the weights of an uninterrupted run.

Every process trains on one thread: identical thread counts keep the comparison exact, and one thread avoids
OpenMP oversubscription (seconds per step) when the 2 cores are shared with other work.
The training folder is real PCam patches plus two unreadable files and one grayscale patch, so the run summary
(`data_report.json`) and the exclusion of bad files before indexing are checked across the kill and resume too.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import gcmae
from gcmae.cli import main
from gcmae.config import dump_yaml
from gcmae.train.pretrain import run_pretrain
from tests.conftest import REPO, SAMPLES
from tests.train.helpers import assert_states_close, checkpoint_state, tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

EPOCHS = ("optim.epochs=2", "optim.warmup_epochs=1")

KILLED_IN_SAVE = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {repo!r})
    import gcmae.train.callbacks as callbacks
    from gcmae.train.pretrain import run_pretrain
    from tests.train.helpers import tiny_config

    real_save = callbacks.torch.save
    def save_half_then_die(obj, f, *args, **kwargs):
        name = os.path.basename(getattr(f, "name", ""))
        if not ("last.ckpt" in name and obj.get("epoch") == 1):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # mid-write, no clean-up of any kind
    callbacks.torch.save = save_half_then_die
    run_pretrain(tiny_config({data!r}, {out!r}, *{extra!r}))
""")


@pytest.fixture()
def train_dir(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    for cls in ("0_negative", "1_metastatic"):
        (root / cls).mkdir(parents=True)
        for f in sorted((SAMPLES / "pcam" / "train" / cls).glob("*.jpg"))[:8]:
            shutil.copy(f, root / cls / f.name)
    first = sorted((root / "0_negative").glob("*.jpg"))[0]
    Image.open(first).convert("L").save(root / "0_negative" / "gray.png")  # usable, with a warning
    (root / "1_metastatic" / "zero.jpg").write_bytes(b"")
    (root / "1_metastatic" / "text.jpg").write_text("not an image\n")
    return root


def test_kill_while_writing_last_ckpt_then_resume(train_dir: Path, tmp_path: Path, one_thread: None) -> None:
    reference = run_pretrain(tiny_config(train_dir, tmp_path / "uninterrupted", *EPOCHS))
    assert reference.trainer.current_epoch == 2 and reference.num_images == 17

    out = tmp_path / "killed"
    script = KILLED_IN_SAVE.format(repo=str(REPO), data=str(train_dir), out=str(out), extra=EPOCHS)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]

    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # the previous epoch, intact
    model, _ = gcmae.load_checkpoint(last)  # and loadable as a full model
    assert model.bank.memory.shape[0] == 17
    [partial] = ckpt_dir.glob(".last.ckpt.*.tmp")  # the half-written file stayed a temp file
    assert 0 < partial.stat().st_size < last.stat().st_size
    with pytest.raises(Exception):
        torch.load(partial, map_location="cpu", weights_only=True)

    config = tmp_path / "killed.yaml"
    config.write_text(dump_yaml(tiny_config(train_dir, out, *EPOCHS)))
    assert main(["pretrain", "--config", str(config)]) == 0  # resumes from last.ckpt
    assert not list(ckpt_dir.glob(".*.tmp"))  # the resumed run removed the half-written file

    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == 1
    assert_states_close(final["state_dict"], checkpoint_state(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt"))
    assert json.loads((out / "data_report.json").read_text()) == {"images": 17, "rejected": 2, "warnings": 1}
    assert sorted(Path(line.split("\t")[0]).name for line in (out / "rejected_images.txt").read_text().splitlines()) \
        == ["text.jpg", "zero.jpg"]
