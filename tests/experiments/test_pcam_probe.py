"""The probe runner: one result file per encoder and pool, resumable, tabulated by label."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.data.in_memory import TensorImageDataset
from gcmae.encoders.loading import RANDOM, load_encoder
from gcmae.evaluate.frozen_probe import colour_histogram_features, frozen_probe
from gcmae.experiments import pcam_probe
from gcmae.experiments.pcam_probe import centre_crop, encoder_features, probe, table
from gcmae.stain.normalizer import StainNormalizer
from tests.conftest import copy_subset


def test_probe_writes_resumes_and_tabulates(samples, tmp_path):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 12)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 6)
    out = tmp_path / "results"
    files = probe(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out, label=None,
                  cache_dir=str(tmp_path / "cache"))
    assert len(files) == 3 and all(f.exists() for f in files)  # hist + (cls, mean)
    records = [json.loads(f.read_text()) for f in files]
    assert {r["pool"] for r in records} == {"hist", "cls", "mean"}
    for r in records:
        assert r["num_train"] == 24 and r["num_val"] == 12
        assert 0.0 <= r["logreg"]["balanced_accuracy"] <= 1.0 and set(r) >= {"knn20", "knn200"}
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = probe(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out,
                  cache_dir=str(tmp_path / "cache"))
    assert {f: f.stat().st_mtime_ns for f in again} == stamps  # finished results are not recomputed
    text = table(out)
    assert "| colour-histogram | hist | 1 |" in text and "| random:vit_tiny:16:0 | cls | 1 |" in text


def _real_patches(samples, n: int = 4) -> torch.Tensor:
    files = sorted((samples / "pcam" / "valid" / "1_metastatic").glob("*.jpg"))[:n]
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


@pytest.mark.parametrize("block", [1, 3, 12])
def test_block_features_match_a_hand_run_of_the_first_blocks(samples, one_thread, block):
    images = _real_patches(samples)
    got = encoder_features("random:vit_tiny:16:0", images, block=block)
    enc = load_encoder(RANDOM, encoder="vit_tiny", img_size=96, patch_size=16, seed=0)
    vit = enc.model.eval()
    x = (images.float() / 255 - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)
    with torch.no_grad():
        t = vit._pos_embed(vit.patch_embed(x))  # cls token prepended, position embedding added
        for blk in list(vit.blocks)[:block]:
            t = blk(t)
        t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    np.testing.assert_allclose(got["cls"], t[:, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["mean"], t[:, 1:].mean(1).numpy(), atol=1e-4)


def test_last_block_is_the_final_features_at_init_and_a_wrong_block_is_refused(samples, one_thread):
    images = _real_patches(samples, 2)
    final = encoder_features("random:vit_tiny:16:0", images)
    last = encoder_features("random:vit_tiny:16:0", images, block=12)  # an untrained final norm is scale 1, shift 0
    np.testing.assert_allclose(last["cls"], final["cls"], atol=1e-4)
    with pytest.raises(ValueError, match="random:vit_tiny:16:0: block 13 requested, but the encoder has blocks 1..12"):
        encoder_features("random:vit_tiny:16:0", images, block=13)


def test_a_block_probe_is_its_own_result_file(samples, tmp_path):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 8)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 4)
    out, cache = tmp_path / "results", str(tmp_path / "cache")
    final = probe(["random:vit_tiny:16:0"], str(train), str(val), out, cache_dir=cache)
    inner = probe(["random:vit_tiny:16:0"], str(train), str(val), out, cache_dir=cache, block=3)
    assert not set(final) & set(inner)
    records = [json.loads(f.read_text()) for f in inner]
    assert {r["block"] for r in records} == {3} and {r["label"] for r in records} == {"random:vit_tiny:16:0@block3"}
    labelled = probe(["random:vit_tiny:16:0"], str(train), str(val), out, label="untrained", cache_dir=cache, block=2)
    assert {json.loads(f.read_text())["label"] for f in labelled} == {"untrained@block2"}  # never pooled with others
    for bad in (["colour-histogram"], ["random:vit_tiny:16:0", "colour-histogram"]):
        with pytest.raises(ValueError, match="colour-histogram"):
            probe(bad, str(train), str(val), out, cache_dir=cache, block=3)
    assert len(list(out.glob("*.json"))) == 6  # refused before anything was probed


def test_centre_crop_takes_the_middle_pixels():
    images = torch.arange(2 * 3 * 6 * 6).reshape(2, 3, 6, 6)
    assert torch.equal(centre_crop(images, 2), images[..., 2:4, 2:4])
    assert torch.equal(centre_crop(images, 3), images[..., 1:4, 1:4])  # odd margin: the extra pixel at the end
    assert torch.equal(centre_crop(images, 6), images)
    with pytest.raises(ValueError, match="centre crop of 7 px asked for 6-px images"):
        centre_crop(images, 7)


def test_a_centre_probe_sees_only_the_centre_resized_to_the_encoder(samples, tmp_path, one_thread, monkeypatch):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 8)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 4)
    out, cache = tmp_path / "results", str(tmp_path / "cache")
    calls = []

    def spy(spec, images, **kwargs):
        calls.append((images.shape[-1], kwargs["random_img_size"]))
        return encoder_features(spec, images, **kwargs)

    monkeypatch.setattr(pcam_probe, "encoder_features", spy)
    files = probe(["random:vit_tiny:16:0", "colour-histogram"], str(train), str(val), out, cache_dir=cache,
                  centre=64)
    records = [json.loads(f.read_text()) for f in files]
    assert {r["label"] for r in records} == {"random:vit_tiny:16:0@centre64", "colour-histogram@centre64"}
    assert {r["centre"] for r in records} == {64}
    assert calls == [(64, 96), (64, 96)]  # train and valid: 64-px centres for an encoder built at 96 px
    assert not set(files) & set(probe(["colour-histogram"], str(train), str(val), out, cache_dir=cache))
    # probe() hands the encoder and the histogram the centre only: the histogram result equals one done by hand
    data = {d: TensorImageDataset(str(folder), 96, cache, validate="none")
            for d, folder in (("tr", train), ("va", val))}
    hand = frozen_probe(*(x for d in ("tr", "va") for x in (
        colour_histogram_features(data[d].images[..., 16:80, 16:80].contiguous()), data[d].labels.numpy())),
        data["tr"].classes)
    hist = next(r for r in records if r["pool"] == "hist")
    assert hist["logreg"] == hand["logreg"] and hist["knn20"] == hand["knn20"]
    # the features: the 96-px untrained ViT on the centre 64 x 64 pixels, upsampled back to 96 (by hand)
    images = _real_patches(samples, 2)
    got = encoder_features("random:vit_tiny:16:0", centre_crop(images, 64), random_img_size=96)
    enc = load_encoder(RANDOM, encoder="vit_tiny", img_size=96, patch_size=16, seed=0)
    x = images[:, :, 16:80, 16:80].float() / 255
    x = (x - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bicubic", align_corners=False)
    with torch.no_grad():
        tokens = enc.model.eval().forward_features(x)
    np.testing.assert_allclose(got["cls"], tokens[:, 0].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="--centre 100: the crop must be 1..96 px"):
        probe(["random:vit_tiny:16:0"], str(train), str(val), out, cache_dir=cache, centre=100)


def test_a_stain_normalised_probe_is_its_own_result_and_sees_normalised_images(samples, tmp_path, one_thread):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 6)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 4)
    out, cache = tmp_path / "results", str(tmp_path / "cache")
    norm = StainNormalizer.fit(None, "macenko")
    plain = probe([pcam_probe.COLOUR], str(train), str(val), out, cache_dir=cache)
    normed = probe([pcam_probe.COLOUR], str(train), str(val), out, cache_dir=cache, stain=norm)
    assert len(plain) == len(normed) == 1 and plain[0] != normed[0]
    record = json.loads(normed[0].read_text())
    assert record["label"] == f"colour-histogram@{norm.id}" and record["stain"]["id"] == norm.id
    assert record["stain_unchanged"] == [0, 0]
    # the histogram features were those of the normalised images, fitted as the protocol says
    tr = TensorImageDataset(train, 96, validate="none", progress=False)
    va = TensorImageDataset(val, 96, validate="none", progress=False)
    by_hand = frozen_probe(colour_histogram_features(norm.normalize(tr.images).images), tr.labels.numpy(),
                           colour_histogram_features(norm.normalize(va.images).images), va.labels.numpy(), tr.classes)
    assert record["logreg"] == by_hand["logreg"]
    assert json.loads(plain[0].read_text())["stain"] is None
