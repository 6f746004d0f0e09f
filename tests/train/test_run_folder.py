"""A run folder is bound to its data and model; a moved folder or a damaged last.ckpt still resumes correctly."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import timm
import torch

from gcmae.config import ConfigError, load_pretrain_config
from gcmae.data.in_memory import TensorImageDataset
from gcmae.encoders.loading import load_encoder
from gcmae.io.export import export_encoder
from gcmae.stain.normalizer import StainNormalizer
from gcmae.train.pretrain import run_pretrain
from tests.train.helpers import assert_states_close, checkpoint_state, tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


def _epoch(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def test_a_moved_run_folder_keeps_writing_last_ckpt(small_pcam, tmp_path):
    run_pretrain(tiny_config(small_pcam, tmp_path / "x", "optim.epochs=1"))
    shutil.move(tmp_path / "x", tmp_path / "y")
    run_pretrain(tiny_config(small_pcam, tmp_path / "y", "optim.epochs=3"))
    ckpts = sorted(p.name for p in (tmp_path / "y" / "checkpoints").iterdir())
    assert ckpts == ["epoch002.ckpt", "last.ckpt"], ckpts  # no last-v1.ckpt, the old epoch file pruned
    assert _epoch(tmp_path / "y" / "checkpoints" / "last.ckpt") == 2


def test_other_data_or_architecture_is_refused_and_config_kept(small_pcam, tmp_path):
    out = tmp_path / "run"
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=1"))
    config_before = (out / "config.yaml").read_text()
    fewer, moved = tmp_path / "fewer", tmp_path / "moved"
    shutil.copytree(small_pcam, fewer)
    shutil.copytree(small_pcam, moved)
    next((fewer / "0_negative").iterdir()).unlink()
    with pytest.raises(ConfigError, match=r"trained on 32 images, but .*fewer has 31.*trainer.out_dir=<a new"):
        run_pretrain(tiny_config(fewer, out, "optim.epochs=2", "trainer.force_resume=true"))
    with pytest.raises(ConfigError, match=r"data.train_dir was .*small.*, now .*moved.*force_resume=true"):
        run_pretrain(tiny_config(moved, out, "optim.epochs=2"))
    with pytest.raises(ConfigError, match=r"model.patch_size was 8, now 16.*trainer.out_dir=<a new folder>"):
        run_pretrain(tiny_config(small_pcam, out, "optim.epochs=2", "model.patch_size=16"))
    with pytest.raises(ConfigError, match=r"trainer.seed was 0, now 1"):
        run_pretrain(tiny_config(small_pcam, out, "optim.epochs=2", "trainer.seed=1"))
    assert (out / "config.yaml").read_text() == config_before
    assert _epoch(out / "checkpoints" / "last.ckpt") == 0
    run_pretrain(tiny_config(f"{small_pcam}/", out, "optim.epochs=2"))  # the same folder spelt another way
    assert _epoch(out / "checkpoints" / "last.ckpt") == 1
    run = run_pretrain(tiny_config(moved, out, "optim.epochs=3", "trainer.force_resume=true"))
    assert run.trainer.current_epoch == 3 and _epoch(out / "checkpoints" / "last.ckpt") == 2


def test_a_truncated_last_ckpt_falls_back_to_the_newest_intact_epoch(small_pcam, tmp_path, caplog):
    out = tmp_path / "run"
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=2"))
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        run = run_pretrain(tiny_config(small_pcam, out, "optim.epochs=3"))
    assert "resuming from" in caplog.text and "epoch001.ckpt" in caplog.text
    assert run.trainer.current_epoch == 3
    assert _epoch(last) == 2


def test_keep_every_n_epochs_keeps_those_checkpoints_beside_the_latest(small_pcam, tmp_path):
    out = tmp_path / "run"
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=4", "trainer.keep_every_n_epochs=2"))
    folder = out / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch003.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (folder / "kept").iterdir()) == ["epoch001.ckpt", "epoch003.ckpt"]
    second = torch.load(folder / "kept" / "epoch001.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert second["epoch"] == 1 and 2 * second["global_step"] == last["global_step"] > 0
    assert_states_close(checkpoint_state(folder / "kept" / "epoch003.ckpt"), last["state_dict"])
    assert not all(torch.equal(second["state_dict"][k], v) for k, v in last["state_dict"].items())


def test_a_stain_normalised_run_records_its_normaliser(small_pcam, tmp_path, caplog):
    out = tmp_path / "run"
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=1", "data.in_memory=true", "data.stain_norm=macenko",
                             f"data.cache_dir={tmp_path / 'cache'}"))
    stored = json.loads((out / "stain.json").read_text())
    norm = StainNormalizer.fit(None, "macenko")
    raw = TensorImageDataset(small_pcam, 32, validate="none", progress=False).images
    assert stored["id"] == norm.id and stored["images_unchanged"] == norm.normalize(raw).num_failed < len(raw)
    assert StainNormalizer.from_dict({k: v for k, v in stored.items() if k != "images_unchanged"}).id == stored["id"]
    assert load_pretrain_config(out / "config.yaml").data.stain_norm == "macenko"
    # its encoder, as a checkpoint and exported, knows it and warns when given raw images
    exported = export_encoder(out / "checkpoints" / "last.ckpt", tmp_path / "export")
    stored_export = json.loads((exported / "config.json").read_text())["gcmae"]
    assert stored_export["stain_norm"] == "macenko" and stored_export["stain_target"] == ""
    assert StainNormalizer.from_dict(stored_export["stain"]).id == norm.id  # the fit itself, no target needed
    assert "macenko-stain-normalised" in (exported / "README.md").read_text()
    timm.create_model(f"local-dir:{exported}", pretrained=True)  # the extra key does not bother timm
    for source in (out / "checkpoints" / "last.ckpt", exported):
        encoder = load_encoder(source)
        assert encoder.pretrain_stain == ("macenko", "")
        with caplog.at_level(logging.WARNING, logger="gcmae.encoders.loading"):
            caplog.clear()
            encoder.use_stain(norm)
            assert not caplog.records and encoder.stain is norm
            encoder.use_stain(None)
            assert "--stain-norm macenko" in caplog.text and encoder.stain is None
        assert encoder.pretraining_normalizer().id == norm.id  # stored (export) or re-fitted (checkpoint)
    assert load_encoder("random", "vit_tiny", 32, 8).pretrain_stain == ("none", "")
    other_target = next((small_pcam / "1_metastatic").glob("*.jpg"))  # a real tile: same method, other target
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gcmae.encoders.loading"):
        load_encoder(exported).use_stain(StainNormalizer.fit(other_target, "macenko"))
    assert f"target {other_target.name}" in caplog.text
    # the images a run trains on are part of what its folder is bound to
    with pytest.raises(ConfigError, match="data.stain_norm was 'macenko', now 'none'"):
        run_pretrain(tiny_config(small_pcam, out, "optim.epochs=2", "data.in_memory=true",
                                 f"data.cache_dir={tmp_path / 'cache'}"))
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=2", "data.in_memory=true", "trainer.force_resume=true",
                             f"data.cache_dir={tmp_path / 'cache'}"))
    assert not (out / "stain.json").exists()  # no stale record of a normalisation it no longer has


def test_checkpoint_and_export_carry_a_custom_stain_target_that_is_gone(small_pcam, samples, tmp_path):
    """Pretrained to a custom target that is then gone (another machine): the checkpoint and its export still give
    the normaliser (`--stain-norm pretrained`); a checkpoint of an earlier gcmae, which recorded only the target's
    path, names the image it lacks, and so does the card of its export."""
    from gcmae.stain import StainError

    target = tmp_path / "lab_target.png"
    shutil.copy(sorted((samples / "crc-val-he-7k" / "TUM").glob("*.png"))[0], target)
    fitted = StainNormalizer.fit(target, "macenko")
    out = tmp_path / "run"
    run_pretrain(tiny_config(small_pcam, out, "optim.epochs=1", "data.in_memory=true", "data.stain_norm=macenko",
                             f"data.stain_target={target}", f"data.cache_dir={tmp_path / 'cache'}"))
    target.unlink()
    ckpt = out / "checkpoints" / "last.ckpt"
    exported = export_encoder(ckpt, tmp_path / "export")
    for source in (ckpt, exported):
        assert load_encoder(source).pretraining_normalizer().id == fitted.id, source
    assert "--stain-norm pretrained` applies the normaliser stored" in (exported / "README.md").read_text()

    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    del old["hyper_parameters"]["stain"]  # as written before checkpoints stored the fit
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(StainError, match="lab_target.png"):
        load_encoder(tmp_path / "old.ckpt").pretraining_normalizer()
    again = export_encoder(tmp_path / "old.ckpt", tmp_path / "export2")
    assert "stain" not in json.loads((again / "config.json").read_text())["gcmae"]
    card = (again / "README.md").read_text()
    assert "not stored with this export" in card and "lab_target.png" in card and "pretrained` applies" not in card
