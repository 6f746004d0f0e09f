"""The feature cache: reused when nothing changed (the model is not run), invalidated by any change."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.encoders.cache import folder_features
from gcmae.encoders.loading import load_encoder
from tests.conftest import save_state

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


@pytest.fixture()
def count_embeds(monkeypatch):
    """Counts calls of `gcmae.encoders.embed.embed` (the encoder's forward for features) in this test."""
    from gcmae.encoders import embed

    calls = []
    original = embed.embed
    monkeypatch.setattr(embed, "embed", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_cache_is_reused_and_invalidated_by_a_changed_checkpoint(tmp_path, pcam_pair, timm_state, count_embeds):
    train, _ = pcam_pair
    ckpt = save_state(tmp_path / "enc.pth", timm_state)
    cache = tmp_path / "cache"
    encoder = load_encoder(ckpt)
    first = folder_features(encoder, train, "cls", cache)
    assert not first.from_cache and first.cache_path.is_file() and first.features.shape == (24, 192)
    assert first.classes == ["0_negative", "1_metastatic"] and first.labels.tolist() == [0] * 12 + [1] * 12
    assert len(count_embeds) > 0

    count_embeds.clear()
    second = folder_features(encoder, train, "cls", cache)
    assert count_embeds == [] and second.from_cache and second.cache_path == first.cache_path
    assert torch.equal(second.features, first.features) and torch.equal(second.labels, first.labels)

    save_state(ckpt, timm_state, variant=1)  # same path, same size, other weights
    changed = folder_features(load_encoder(ckpt), train, "cls", cache)
    assert len(count_embeds) > 0 and not changed.from_cache and changed.cache_path != first.cache_path
    assert not torch.allclose(changed.features, first.features)


def test_folder_and_pool_changes_invalidate(tmp_path, pcam_pair, timm_encoder, count_embeds):
    train, _ = pcam_pair
    folder = shutil.copytree(train, tmp_path / "train")
    encoder = timm_encoder
    cache = tmp_path / "cache"
    cls = folder_features(encoder, folder, "cls", cache)
    mean = folder_features(encoder, folder, "mean", cache)
    assert not mean.from_cache and not torch.allclose(mean.features, cls.features)
    # what is stored is the encoder's output on the evaluation transform of each file, in file order
    first = Image.open(folder / cls.files[0]).convert("RGB")
    from gcmae.data.transforms import eval_transform

    with torch.no_grad():
        tokens = encoder.model.forward_features(eval_transform(32, encoder.mean, encoder.std)(first)[None])
    assert torch.allclose(cls.features[0], tokens[0, 0], atol=1e-5)
    assert torch.allclose(mean.features[0], tokens[0, 1:].mean(0), atol=1e-5)

    shutil.copy(folder / cls.files[0], folder / "0_negative" / "copy.jpg")
    count_embeds.clear()
    grown = folder_features(encoder, folder, "cls", cache)
    assert count_embeds and not grown.from_cache and len(grown.files) == len(cls.files) + 1
    (folder / "0_negative" / "copy.jpg").unlink()
    count_embeds.clear()
    assert folder_features(encoder, folder, "cls", cache).from_cache and not count_embeds
    touched = folder / cls.files[-1]  # rewritten in place (same name, same size): a newer modification time
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert not folder_features(encoder, folder, "cls", cache).from_cache and count_embeds
    assert len(list(cache.glob("*.npz"))) == 4


def test_image_size_changes_the_key(tmp_path, pcam_pair, timm_checkpoint, timm_encoder):
    folder_features(timm_encoder, pcam_pair[1], "cls", tmp_path / "cache")
    with pytest.warns(UserWarning, match="interpolated"):
        bigger = load_encoder(timm_checkpoint, img_size=48)
    assert not folder_features(bigger, pcam_pair[1], "cls", tmp_path / "cache").from_cache


def test_corrupt_cache_file_is_recomputed(tmp_path, pcam_pair, timm_encoder):
    train, _ = pcam_pair
    encoder = timm_encoder
    first = folder_features(encoder, train, "cls", tmp_path / "cache")
    first.cache_path.write_bytes(b"not a zip file")
    again = folder_features(encoder, train, "cls", tmp_path / "cache")
    assert not again.from_cache and torch.allclose(again.features, first.features)
    assert np.load(first.cache_path)["features"].shape == (24, 192)


def test_random_init_is_seeded():
    a, b, c = (load_encoder("random", "vit_tiny", 32, 8, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.model.blocks[0].attn.qkv.weight, b.model.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.model.blocks[0].attn.qkv.weight, c.model.blocks[0].attn.qkv.weight)
    assert a.identity == b.identity != c.identity


def test_encoder_errors(tmp_path, timm_checkpoint):
    with pytest.raises(ValueError, match="needs --encoder"):
        load_encoder("random")
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.ckpt")
    ckpt = timm_checkpoint
    with pytest.raises(ValueError, match="vit_tiny .*--encoder vit_small expects 384 wide"):
        load_encoder(ckpt, encoder="vit_small")
    with pytest.raises(ValueError, match="--patch-size 16"):
        load_encoder(ckpt, patch_size=16)


def test_unreadable_evaluation_image_is_excluded_and_listed_never_replaced(tmp_path, pcam_pair, timm_encoder):
    """Issue 11 item 5: a truncated JPEG (passes the header check) used to be replaced by its neighbour, which was
    then scored twice; now it is left out of the features and named, also when the features come from the cache."""
    val = shutil.copytree(pcam_pair[1], tmp_path / "val")
    bad = sorted((val / "1_metastatic").glob("*.jpg"))[2]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    clean = folder_features(timm_encoder, pcam_pair[1], "cls")
    name = str(bad.relative_to(val))
    for from_cache in (False, True):
        fs = folder_features(timm_encoder, val, "cls", tmp_path / "cache", batch_size=5)
        assert fs.from_cache is from_cache
        assert len(fs.files) == 15 and name not in fs.files and len(fs.features) == len(fs.labels) == 15
        assert [f for f, _ in fs.excluded] == [name] and "truncated" in fs.excluded[0][1]
        keep = [i for i, f in enumerate(clean.files) if f != name]
        assert torch.allclose(fs.features, clean.features[keep], atol=1e-5)  # no duplicate of a neighbour
        assert torch.equal(fs.labels, clean.labels[keep])
