"""Encoders load as a plain timm ViT (no decoder, no memory bank) and embed exactly as the whole GCMAE did."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from gcmae.encoders.embed import embed
from gcmae.encoders.loading import load_autoencoder, load_encoder
from gcmae.io.convert import build_gcmae_from_weights, load_weights
from gcmae.models.gcmae import GCMAE


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_a_checkpoint_loads_as_the_encoder_alone_and_embeds_as_gcmae(timm_checkpoint):
    encoder = load_encoder(timm_checkpoint)
    assert isinstance(encoder.model, VisionTransformer) and not encoder.model.training
    assert not any(name.startswith(("decoder", "bank")) for name, _ in encoder.model.named_parameters())
    whole = build_gcmae_from_weights(load_weights(timm_checkpoint), num_data=2, load_bank=False)
    imgs = _images()
    with torch.no_grad():
        for pool in ("cls", "mean"):
            assert torch.equal(embed(encoder.model, imgs, pool), whole.embed(imgs, pool))


def test_another_image_size_interpolates_the_position_embeddings(timm_checkpoint):
    with pytest.warns(UserWarning, match="interpolated"):
        encoder = load_encoder(timm_checkpoint, img_size=48)
    assert encoder.img_size == 48
    with torch.no_grad():
        assert embed(encoder.model, _images(2, 48)).shape == (2, 192)


def test_random_init_is_the_encoder_of_the_seeded_gcmae():
    encoder = load_encoder("random", "vit_tiny", 32, 8, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        whole = GCMAE(num_data=2, encoder="vit_tiny", img_size=32, patch_size=8)
    assert encoder.model.state_dict().keys() == whole.encoder.state_dict().keys()
    assert all(torch.equal(v, whole.encoder.state_dict()[k]) for k, v in encoder.model.state_dict().items())
    auto = load_autoencoder("random", "vit_tiny", 32, 8, seed=3)
    assert all(torch.equal(v, auto.state_dict()[k]) for k, v in whole.state_dict().items())


def test_reconstructions_need_decoder_weights(timm_checkpoint):
    assert not load_encoder(timm_checkpoint).has_decoder
    with pytest.raises(ValueError, match="no decoder weights"):
        load_autoencoder(timm_checkpoint)


def test_an_export_keeps_its_identity_when_its_card_or_notes_change(tmp_path):
    """The identity of an export folder (what feature files, classifiers and fine-tuning runs are bound to) is its
    weights and the config entries that decide the features: not its README or config.json's `gcmae` notes."""
    import hashlib
    import json
    import shutil

    from gcmae.encoders.loading import file_digest
    from gcmae.pretrained import resolve

    folder = shutil.copytree(resolve("gcmae-vit-tiny-pcam"), tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    # by hand: the weights' bytes after the canonical JSON of the three feature-deciding entries
    expected = hashlib.sha256(json.dumps({k: config[k] for k in ("architecture", "model_args", "pretrained_cfg")},
                                         sort_keys=True).encode() + b"\0" + (folder / "model.safetensors").read_bytes())
    before = file_digest(folder)
    assert before == expected.hexdigest()
    (folder / "README.md").write_text("a rewritten model card")
    config["gcmae"]["note"] = "anything"
    (folder / "config.json").write_text(json.dumps(config))
    assert file_digest(folder) == before
    config["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]  # another input normalisation: other features
    (folder / "config.json").write_text(json.dumps(config))
    assert file_digest(folder) != before
    plain = tmp_path / "plain"  # any other folder: every file counts
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    first = file_digest(plain)
    (plain / "b.txt").write_text("y")
    assert file_digest(plain) != first
