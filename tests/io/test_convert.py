"""Importing official GCMAE / MAE checkpoints and timm state dicts: same features, reconstructions and memory bank."""
import argparse
import json
import warnings

import numpy as np
import pytest
import timm
import torch
import yaml

from gcmae.cli import main
from gcmae.io.checkpoints import CheckpointError
from gcmae.io.convert import ConversionError, build_gcmae_from_weights, load_weights
from gcmae.io.export import export_encoder
from gcmae.models.gcmae import GCMAE

TINY = dict(encoder="vit_tiny", img_size=32, patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2,
            num_negatives=16)
NUM_DATA = 20
# our GCMAE names -> the official MAE / GCMAE names (models_gcmae.MaskedAutoencoderViT), written independently here
OFFICIAL_NAMES = {"decoder.embed.": "decoder_embed.", "decoder.mask_token": "mask_token",
                  "decoder.pos_embed": "decoder_pos_embed", "decoder.blocks.": "decoder_blocks.",
                  "decoder.norm.": "decoder_norm.", "decoder.pred.": "decoder_pred.", "encoder.": ""}


def to_official(model: GCMAE, with_decoder: bool = True, with_bank: bool = True) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("bank."):
            continue
        ours = next(p for p in OFFICIAL_NAMES if key.startswith(p))
        if with_decoder or ours == "encoder.":
            out[OFFICIAL_NAMES[ours] + key[len(ours):]] = value.clone()
    if with_bank:
        b = model.bank
        out["lemniscate.memory"] = b.memory.clone()
        out["lemniscate.params"] = torch.tensor([b.num_negatives, b.temperature, b.z.item(), b.momentum])
    return out


@pytest.fixture(scope="module")
def reference() -> GCMAE:
    """A tiny GCMAE with non-default weights everywhere, a bank that differs from its init and a known Z."""
    torch.manual_seed(0)
    model = GCMAE(num_data=NUM_DATA, **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.bank.memory.copy_(torch.nn.functional.normalize(torch.randn(NUM_DATA, 192), dim=1))
        model.bank.z.fill_(1234.5)
    return model


@pytest.fixture()
def official_file(reference, tmp_path):
    path = tmp_path / "checkpoint-79.pth"
    torch.save({"model": to_official(reference), "epoch": 79}, path)
    return path


def _inputs(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, size, size, generator=g), torch.rand(3, (size // 8) ** 2, generator=g)


def test_official_gcmae_checkpoint_gives_identical_model(reference, official_file):
    w = load_weights(official_file)
    assert (w.kind, w.encoder, w.embed_dim, w.depth, w.num_heads, w.patch_size, w.img_size) == (
        "gcmae_official", "vit_tiny", 192, 12, 3, 8, 32)
    assert (w.decoder_dim, w.decoder_depth, w.bank_z) == (32, 1, pytest.approx(1234.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same image size: nothing is interpolated, no warning
        model = build_gcmae_from_weights(w, decoder_heads=2)  # official decoders have 16 heads; ours is tiny
    imgs, noise = _inputs()
    with torch.no_grad():
        assert torch.equal(model.embed(imgs), reference.embed(imgs))
        rec, mask = model.reconstruct(imgs, noise)
        rec_ref, mask_ref = reference.reconstruct(imgs, noise)
    assert torch.equal(rec, rec_ref) and torch.equal(mask, mask_ref)
    assert torch.equal(model.bank.memory, reference.bank.memory)
    assert torch.equal(model.bank.z, reference.bank.z)
    assert (model.bank.num_negatives, model.bank.temperature, model.bank.momentum) == (16, pytest.approx(0.07), 0.5)
    with pytest.raises(ConversionError, match="20 entries.*num_data=7"):
        build_gcmae_from_weights(w, num_data=7, decoder_heads=2)
    fresh = build_gcmae_from_weights(w, num_data=7, decoder_heads=2, load_bank=False)
    assert fresh.bank.memory.shape == (7, 192) and fresh.bank.z.item() == -1.0


def test_unestimated_z_stays_unestimated(reference, tmp_path):
    state = to_official(reference)
    state["lemniscate.params"][2] = -1
    torch.save({"model": state, "epoch": 0}, tmp_path / "c.pth")
    w = load_weights(tmp_path / "c.pth")
    assert w.bank_z is None
    assert build_gcmae_from_weights(w, decoder_heads=2).bank.z.item() == -1.0


@pytest.mark.parametrize("with_decoder", [False, True])
def test_official_mae_checkpoint(reference, tmp_path, with_decoder):
    args = argparse.Namespace(model="mae_vit_tiny_patch8", input_size=32, mask_ratio=0.75, norm_pix_loss=True,
                              epochs=400, batch_size=64, blr=1.5e-4, data_path="/data/train")
    path = tmp_path / "mae.pth"
    torch.save({"model": to_official(reference, with_decoder, with_bank=False), "args": args, "epoch": 399}, path)
    w = load_weights(path)
    assert w.kind == "mae_official" and w.bank_memory is None and (w.decoder_state is None) != with_decoder
    assert w.config["model"]["mask_ratio"] == 0.75 and w.config["data"]["train_dir"] == "/data/train"
    with pytest.raises(ConversionError, match="num_data"):
        build_gcmae_from_weights(w)
    model = build_gcmae_from_weights(w, num_data=5, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert model.mask_ratio == 0.75
    imgs, noise = _inputs()
    with torch.no_grad():
        assert torch.equal(model.embed(imgs), reference.embed(imgs))
        latent, _, ids_restore = model.encode_masked(imgs, noise)
        same_decoder = torch.equal(model.decoder(latent, ids_restore), reference.decoder(latent, ids_restore))
    assert same_decoder == with_decoder


def test_plain_timm_state_dict_drops_the_head(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    w = load_weights(tmp_path / "timm.pth")
    assert (w.kind, w.encoder, w.patch_size, w.img_size, w.num_heads) == ("timm", "vit_tiny", 16, 224, 3)
    assert not any(k.startswith("head.") for k in w.encoder_state)
    model = build_gcmae_from_weights(w, num_data=4, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = net.forward_features(x)
        assert torch.allclose(model.embed(x), net.forward_head(tokens, pre_logits=True), atol=1e-6, rtol=0)


def test_new_image_size_interpolates_position_embeddings(reference, official_file):
    w = load_weights(official_file)
    with pytest.warns(UserWarning, match=r"32 -> 64 px.*interpolated encoder.pos_embed, decoder.pos_embed"):
        model = build_gcmae_from_weights(w, img_size=64, decoder_heads=2)
    assert model.encoder.pos_embed.shape == (1, 65, 192) and model.decoder.pos_embed.shape == (1, 65, 32)
    assert torch.equal(model.encoder.pos_embed[:, 0], reference.encoder.pos_embed[:, 0])  # cls position kept
    assert torch.equal(model.encoder.blocks[3].mlp.fc1.weight, reference.encoder.blocks[3].mlp.fc1.weight)
    imgs, noise = _inputs(64)
    with torch.no_grad():
        losses = model.training_losses(imgs, torch.tensor([0, 1, 2]), seed=0)
        assert model.embed(imgs).shape == (3, 192) and torch.isfinite(losses["loss"])


def test_patch_size_mismatch_lists_keys_and_shapes(official_file):
    w = load_weights(official_file)
    with pytest.raises(ConversionError) as err:
        build_gcmae_from_weights(w, patch_size=16, decoder_heads=2)
    msg = str(err.value)
    assert "encoder.patch_embed.proj.weight: file (192, 3, 8, 8) vs model (192, 3, 16, 16)" in msg
    assert "decoder.pred.weight: file (192, 32) vs model (768, 32)" in msg
    assert official_file.name in msg
    with pytest.raises(ConversionError, match=r"encoder.cls_token: file \(1, 1, 192\) vs model \(1, 1, 384\)"):
        build_gcmae_from_weights(w, encoder="vit_small", decoder_heads=2)


def test_unknown_width_is_an_error(tmp_path):
    state = {"patch_embed.proj.weight": torch.zeros(100, 3, 8, 8), "pos_embed": torch.zeros(1, 17, 100),
             "cls_token": torch.zeros(1, 1, 100), "blocks.0.attn.qkv.weight": torch.zeros(300, 100)}
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ConversionError, match="100 wide with 1 blocks matches no preset"):
        load_weights(tmp_path / "odd.pth")


class Payload:
    """Pickles as a call to open(marker, 'w'): loading it unsafely creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_tampered_file_is_refused_without_running_its_payload(reference, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "tampered.pth"
    torch.save({"model": to_official(reference), "epoch": 1, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*tampered\.pth.*io\.open"):
        load_weights(path)
    assert not marker.exists()
    assert main(["convert", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out" / "model.safetensors").exists()
    torch.load(path, weights_only=False)  # control: the payload is real and runs under an unsafe load
    assert marker.exists()


def test_truncated_files_are_refused(official_file, tmp_path):
    data = official_file.read_bytes()
    for cut in (100, len(data) // 2):
        truncated = tmp_path / f"truncated_{cut}.pth"
        truncated.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"truncated_{cut}\.pth: truncated"):
            load_weights(truncated)
    noise = tmp_path / "noise.pth"  # random bytes go to torch's legacy unpickler, which raises IndexError & co.
    for seed in range(20):
        noise.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(CheckpointError, match=r"noise\.pth: truncated, corrupt or not a torch file"):
            load_weights(noise)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(tmp_path / "missing.pth")


def test_convert_official_to_timm_folder(reference, official_file, tmp_path, capsys):
    out = tmp_path / "encoder"
    assert main(["convert", str(official_file), "--out", str(out)]) == 0
    assert "encoder written" in capsys.readouterr().out
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = _inputs()[0]
    with torch.no_grad():
        assert torch.allclose(timm_model(x), reference.embed(x), atol=1e-6, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.6790, 0.5053, 0.6690], abs=1e-4)  # official GCMAE
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "timm"
    assert {"pathology", "self-supervised", "gcmae", "image-feature-extraction"} <= set(front["tags"])
    assert "official GCMAE" in card and "| negatives K | 16 |" in card and "number of training images: 20" in card
    again = load_weights(out)  # the exported folder itself is a supported input
    assert again.kind == "timm" and again.config["data"]["mean"] == config["pretrained_cfg"]["mean"]
    with pytest.raises(ValueError, match="is a folder"):
        export_encoder(official_file, tmp_path / "encoder.ckpt")
