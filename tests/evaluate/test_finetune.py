"""`gcmae finetune` on real PCam patches (ViT-Tiny/8 at 32 px): it fits a small training set, applies the
per-iteration warm-up + cosine lr to every layer group, keeps the best epoch by the val metric, resumes an
interrupted run, skips a finished one, and rejects bad input with clear errors."""
import csv
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from gcmae.cli import main
from gcmae.evaluate.finetune import run_finetune
from gcmae.evaluate.options import FinetuneOptions
from tests.conftest import copy_subset

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

TINY = dict(encoder="vit_tiny", img_size=32, patch_size=8, batch_size=8, device="cpu", num_workers=0)
NO_AUGMENT = dict(drop_path=0.0, label_smoothing=0.0, randaug_ops=0, reprob=0.0, crop_scale=(1.0, 1.0))


@pytest.fixture(scope="module")
def pcam16(tmp_path_factory, samples: Path) -> Path:
    """16 real PCam training patches, 8 per class."""
    return copy_subset(samples / "pcam" / "train", tmp_path_factory.mktemp("ft") / "train16", 8)


class LrRecorder(L.Callback):
    """(epoch, global step, [(lr_scale, lr) per group]) before every training batch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, list[tuple[float, float]]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.steps.append((trainer.current_epoch, trainer.global_step, [(g["lr_scale"], g["lr"]) for g in groups]))


class StopAtEpoch(L.Callback):
    """Simulates a killed job: raises when epoch `epoch` starts (after the previous epoch's checkpoints)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def expected_lr(step: int, warmup: int, total: int, peak: float, floor: float) -> float:
    """MAE's lr_sched.adjust_learning_rate, per iteration, written out independently."""
    if step < warmup:
        return peak * step / warmup
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def logged_epochs(log_dir: Path, key: str) -> dict[int, float]:
    values = {}
    for f in sorted(log_dir.glob("metrics*.csv")):
        for row in csv.DictReader(f.open()):
            if row.get(key):
                values[int(row["epoch"])] = float(row[key])
    return values


def test_fits_a_small_real_set_with_the_scheduled_lr(pcam16, tmp_path):
    """Train = val = 16 PCam patches, random init: the loss falls and the model fits; every group's lr at every
    step is lr_scale x the warm-up + cosine formula; best.ckpt is the first epoch with the best val metric."""
    out = tmp_path / "fit"
    rec = LrRecorder()
    opts = FinetuneOptions(checkpoint="random", train=str(pcam16), val=str(pcam16), out=str(out), epochs=6,
                           warmup_epochs=1, base_lr=0.05, min_lr=1e-5, **TINY, **NO_AUGMENT)
    result = run_finetune(opts, [rec])

    history = result["history"]
    assert [h["epoch"] for h in history] == list(range(6))
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    m = result["results"]["finetune"]
    assert m["accuracy"] >= 0.85 and m["num_samples"] == 16

    peak = 0.05 * 8 / 256
    assert result["peak_lr"] == pytest.approx(peak)
    assert [s[1] for s in rec.steps] == list(range(12))  # 2 steps per epoch, 6 epochs
    scales = sorted({round(scale, 12) for scale, _ in rec.steps[0][2]})
    assert scales == pytest.approx([0.75 ** k for k in range(13, -1, -1)])  # 12 blocks: 0.75^13 ... 1
    for _, step, groups in rec.steps:
        for scale, lr in groups:
            assert lr == pytest.approx(scale * expected_lr(step, 2, 12, peak, 1e-5), rel=1e-9, abs=1e-15)

    metric = logged_epochs(out / "logs", "val/balanced_accuracy")
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    first_best = max(metric, key=lambda e: (metric[e], -e))
    assert best["epoch"] == first_best and m["best_epoch"] == first_best + 1
    assert m["balanced_accuracy"] == pytest.approx(metric[first_best])  # the final evaluation is of best.ckpt
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 5 and "optimizer_states" in last and "optimizer_states" not in best
    for name in ("metrics.json", "report.md", "curves.png", "confusion_finetune.csv", "confusion_finetune.png",
                 "config.yaml", "run.json"):
        assert (out / name).is_file(), name
    assert "(curves.png)" in (out / "report.md").read_text()


def test_resumes_after_a_kill_and_skips_when_finished(pcam_pair, trained_checkpoint, tmp_path):
    """From a real GCMAE pretraining checkpoint; killed at the start of epoch 2 of 2, re-run, re-run again."""
    train, val = pcam_pair
    out = tmp_path / "resume"
    opts = FinetuneOptions(checkpoint=str(trained_checkpoint), train=str(train), val=str(val), out=str(out),
                           epochs=2, warmup_epochs=1, **TINY)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_finetune(opts, [StopAtEpoch(1)])
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0
    assert not (out / "metrics.json").exists()

    rec = LrRecorder()
    result = run_finetune(opts, [rec])
    assert not result["skipped"]
    assert sorted({epoch for epoch, _, _ in rec.steps}) == [1]  # continued, not restarted
    assert rec.steps[0][1] == 3  # 24 images / batch 8: the global step (and so the lr) continues too
    assert [h["epoch"] for h in result["history"]] == [0, 1]  # the log of the killed part is kept
    assert "gcmae checkpoint" in result["weights"]

    rec = LrRecorder()
    again = run_finetune(opts, [rec])
    assert again["skipped"] and rec.steps == [] and again["results"] == result["results"]

    changed = FinetuneOptions(**{**opts.__dict__, "base_lr": 2e-3})
    with pytest.raises(ValueError, match="other settings.*base_lr"):
        run_finetune(changed)


def cli(tmp_path, train, val, *extra) -> list[str]:
    return ["finetune", "--train", str(train), "--val", str(val), "--out", str(tmp_path / "out"), "--epochs", "1",
            *extra]


RANDOM = ["--checkpoint", "random", "--encoder", "vit_tiny", "--img-size", "32", "--patch-size", "8"]


def test_stain_norm_normalises_train_and_val_images_before_their_transforms(pcam16, tmp_path):
    """--stain-norm macenko: what the model is validated on is the Macenko-normalised image through the eval
    transform (composed here by hand), and the run records the normalisation."""
    from PIL import Image

    from gcmae.evaluate.linprobe_paper import probe_eval_transform
    from gcmae.stain import make_normalizer

    class FirstValBatch(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == 0 and not hasattr(self, "images"):
                self.images = batch[0].clone()

    out, first = tmp_path / "stain", FirstValBatch()
    opts = FinetuneOptions(checkpoint="random", train=str(pcam16), val=str(pcam16), out=str(out), epochs=1,
                           warmup_epochs=0, stain_norm="macenko", **TINY, **NO_AUGMENT)
    run_finetune(opts, [first])
    norm = make_normalizer("macenko")
    files = sorted(p for p in pcam16.rglob("*.jpg"))[:2]  # the val loader keeps the sorted folder order
    eval_tf = probe_eval_transform(32, (0.6790, 0.5053, 0.6690), (0.1916, 0.2040, 0.1565))
    for i, path in enumerate(files):
        with Image.open(path) as im:
            rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).unsqueeze(0)
        normalised = Image.fromarray(norm.normalize(rgb).images[0].permute(1, 2, 0).numpy())
        raw = Image.fromarray(rgb[0].permute(1, 2, 0).numpy())
        torch.testing.assert_close(first.images[i], eval_tf(normalised), atol=1e-6, rtol=0)
        assert (first.images[i] - eval_tf(raw)).abs().max() > 0.1
    run = json.loads((out / "run.json").read_text())
    assert run["stain_id"] == norm.id and "stain_norm" not in run["settings"]  # what it did, not the flags
    assert json.loads((out / "metrics.json").read_text())["stain"]["id"] == norm.id


def test_missing_folder(pcam_pair, tmp_path, capsys):
    assert main(cli(tmp_path, tmp_path / "nowhere", pcam_pair[1], *RANDOM)) == 2
    assert f"image folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_folder_without_images(pcam_pair, tmp_path, capsys):
    empty = tmp_path / "empty"
    for cls in ("0_negative", "1_metastatic"):
        (empty / cls).mkdir(parents=True)
        (empty / cls / "notes.txt").write_text("not an image")
    assert main(cli(tmp_path, pcam_pair[0], empty, *RANDOM)) == 2
    assert f"no usable images in {empty}" in capsys.readouterr().err


def test_checkpoint_of_another_architecture(pcam_pair, timm_checkpoint, tmp_path, capsys):
    assert main(cli(tmp_path, *pcam_pair, "--checkpoint", str(timm_checkpoint), "--encoder", "vit_small")) == 2
    err = capsys.readouterr().err
    assert str(timm_checkpoint) in err and "vit_tiny" in err and "--encoder vit_small" in err
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


def test_class_mismatch(pcam_pair, tmp_path, capsys, samples):
    other = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 2)
    (other / "1_metastatic").rename(other / "1_tumour")
    assert main(cli(tmp_path, pcam_pair[0], other, *RANDOM)) == 2
    err = capsys.readouterr().err
    assert "class sets differ" in err and "only in train: ['1_metastatic']; only in val: ['1_tumour']" in err


def test_bad_option_values(pcam_pair, tmp_path, capsys):
    assert main(cli(tmp_path, *pcam_pair, *RANDOM, "--layer-decay", "1.5")) == 2
    assert "layer_decay must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(cli(tmp_path, *pcam_pair, *RANDOM, "--metric", "auc", "--config", str(tmp_path / "no.yaml"))) == 2
    assert "config file not found" in capsys.readouterr().err
    # fine-tuning embeds no folder to cache: a feature-cache option is an error, not silently ignored
    with pytest.raises(SystemExit):
        main(cli(tmp_path, *pcam_pair, *RANDOM, "--cache-dir", str(tmp_path / "cache")))
    assert "unrecognized arguments: --cache-dir" in capsys.readouterr().err
    (tmp_path / "ft.yaml").write_text("cache_dir: runs/feature-cache\n")
    assert main(cli(tmp_path, *pcam_pair, *RANDOM, "--config", str(tmp_path / "ft.yaml"))) == 2
    assert "unknown config key(s) cache_dir" in capsys.readouterr().err


def test_configs_hold_the_recipe():
    from gcmae.config import from_dict, load_yaml

    repo = Path(__file__).resolve().parents[2]
    paper = from_dict(FinetuneOptions, load_yaml(repo / "configs" / "evaluate" / "finetune_paper.yaml"))
    assert (paper.base_lr, paper.layer_decay, paper.weight_decay, paper.drop_path, paper.label_smoothing,
            paper.epochs, paper.warmup_epochs, paper.randaug_ops, paper.randaug_magnitude, paper.encoder,
            paper.img_size, paper.patch_size, paper.pool) == (1e-3, 0.75, 0.05, 0.1, 0.1, 50, 5, 2, 9, "vit_base",
                                                              224, 16, "cls")
    demo = from_dict(FinetuneOptions, load_yaml(repo / "configs" / "evaluate" / "finetune_cpu_demo.yaml"))
    assert demo.device == "cpu" and Path(repo / demo.train).is_dir() and Path(repo / demo.val).is_dir()
