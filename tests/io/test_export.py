"""Round trip: our checkpoint -> gcmae export -> timm.create_model('local-dir:...') gives the same features."""
import json

import pytest
import timm
import torch

from gcmae import from_pretrained, load_checkpoint
from gcmae.io.checkpoints import CheckpointError
from gcmae.io.export import export_encoder
from gcmae.train.pretrain import run_pretrain
from tests.train.helpers import tiny_config


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    import shutil

    from tests.conftest import SAMPLES

    root = tmp_path_factory.mktemp("data")
    for cls in ("0_negative", "1_metastatic"):
        (root / cls).mkdir()
        for f in sorted((SAMPLES / "pcam" / "train" / cls).glob("*.jpg"))[:8]:
            shutil.copy(f, root / cls / f.name)
    out = tmp_path_factory.mktemp("run")
    run_pretrain(tiny_config(root, out, "optim.epochs=1"))
    return out / "checkpoints" / "last.ckpt"


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
