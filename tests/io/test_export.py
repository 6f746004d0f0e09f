"""Round trip: our checkpoint -> gcmae export -> timm.create_model('local-dir:...') gives the same features."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml

from gcmae import from_pretrained, load_checkpoint
from gcmae.io.checkpoints import CheckpointError
from gcmae.io.convert import build_gcmae_from_weights, load_weights
from gcmae.io.export import export_encoder
from tests.train.helpers import assert_states_close

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


def test_exported_encoder_loads_in_timm_with_identical_features(trained_checkpoint, tmp_path):
    model, cfg = load_checkpoint(trained_checkpoint)
    out = export_encoder(trained_checkpoint, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.6790, 0.5053, 0.6690])
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours = from_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.encoder.eval()(x)
        assert torch.allclose(timm_model(x), expected, atol=1e-6)
        assert torch.allclose(ours(x), expected, atol=1e-6)
    assert tuple(ours.pretrained_cfg["input_size"]) == (3, 32, 32)


def test_truncated_or_foreign_checkpoint_is_refused(trained_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.ckpt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a gcmae pretraining checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_own_checkpoint_imports_like_load_checkpoint(trained_checkpoint):
    model, cfg = load_checkpoint(trained_checkpoint)
    w = load_weights(trained_checkpoint)
    assert (w.kind, w.encoder, w.img_size, w.patch_size, w.num_data) == ("gcmae", "vit_tiny", 32, 8, 24)  # 12 + 12 patches
    assert w.bank_z == pytest.approx(model.bank.z.item()) and w.bank_z > 0  # estimated during the epoch
    rebuilt = build_gcmae_from_weights(w)
    assert_states_close(rebuilt.state_dict(), model.state_dict())
    assert (rebuilt.bank.num_negatives, rebuilt.decoder.blocks[0].attn.num_heads) == (16, 2)


def test_model_card_from_the_run_config_and_metrics(trained_checkpoint, tmp_path):
    checkpoints = tmp_path / "demo" / "pretrain" / "checkpoints"  # the `gcmae demo` layout
    checkpoints.mkdir(parents=True)
    ckpt = checkpoints / "last.ckpt"
    shutil.copy(trained_checkpoint, ckpt)
    knn = [{"model": "gcmae", "task": "PCam valid", "pool": "cls", "k": 200, "accuracy": 0.765, "accuracy_1nn": 0.685}]
    (tmp_path / "demo" / "metrics.json").write_text(json.dumps({"knn": knn, "epochs": 1}))
    card = (export_encoder(ckpt, tmp_path / "encoder") / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "timm" and front["license"] == "apache-2.0"
    assert front["tags"] == ["pathology", "self-supervised", "gcmae", "image-feature-extraction"]
    _, cfg = load_checkpoint(ckpt)
    assert f"image folder: {cfg.data.train_dir}" in card and "number of training images: 24" in card
    for row in ("| image size / patch size | 32 px / 8 px |", "| mask ratio | 0.5 |", "| negatives K | 16 |",
                "| contrast weight (total = MAE + w x contrast) | 0.1 |", "| temperature T | 0.07 |", "| epochs | 1 |",
                "| batch size (per device) | 8 |", "| gcmae | PCam valid | cls | 200 | 0.765 | 0.685 |",
                f"| contrast objective | {'nce (official' if cfg.loss.objective == 'nce' else 'infonce'}",
                f"| seed | {cfg.trainer.seed} |", f"| augmentation | random resized crop {cfg.data.crop_scale[0]}-"):
        assert row in card, row
    assert "mean = [0.679, 0.5053, 0.669]" in card and 'timm.create_model("local-dir:' in card


def test_fp16_export_is_half_the_size_and_loads_by_name(trained_checkpoint, tmp_path, monkeypatch):
    """A shipped encoder is an fp16 export under gcmae/weights/NAME: loadable by name wherever a checkpoint is."""
    import gcmae.pretrained
    from gcmae.encoders.loading import load_encoder

    full = export_encoder(trained_checkpoint, tmp_path / "full")
    weights = tmp_path / "weights"
    half = export_encoder(trained_checkpoint, weights / "tiny-test", fp16=True)
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    monkeypatch.setattr(gcmae.pretrained, "WEIGHTS_DIR", weights)
    monkeypatch.chdir(tmp_path)
    assert gcmae.pretrained.available() == ["tiny-test"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = from_pretrained(full).forward_features(x)
        by_name = from_pretrained("tiny-test")
        assert next(by_name.parameters()).dtype == torch.float32
        torch.testing.assert_close(by_name.forward_features(x), ref, atol=2e-2, rtol=2e-2)
        via_loader = load_encoder("tiny-test").model.eval().forward_features(x)
        torch.testing.assert_close(via_loader, by_name.forward_features(x))
    (tmp_path / "tiny-test").mkdir()  # a folder of that name in the working directory wins over the shipped one
    assert gcmae.pretrained.resolve("tiny-test") == Path("tiny-test")
    with pytest.raises(FileNotFoundError, match="nor the name of a shipped one"):
        from_pretrained("no-such-encoder")
