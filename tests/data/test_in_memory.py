"""The in-memory folder: decoded once, optionally stain-normalised once, both cached under the folder's key."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchstain.torch.normalizers import TorchMacenkoNormalizer

from gcmae.data.in_memory import TensorImageDataset, stain_normalize_images
from gcmae.stain.normalizer import ALPHA, BETA, IO, StainNormalizer
from tests.conftest import copy_subset


@pytest.fixture()
def folder_with_background(samples, tmp_path):
    """4 + 4 real PCam patches and one white (background-only) image, which no stain can be estimated for."""
    root = copy_subset(samples / "pcam" / "train", tmp_path / "tiles", 4)
    Image.new("RGB", (96, 96), (245, 245, 245)).save(root / "0_negative" / "zz_background.png")
    return root


def _torchstain_by_hand(normalizer: StainNormalizer, image: torch.Tensor) -> torch.Tensor:
    """torchstain's Macenko on one uint8 (3, H, W) tile with the normaliser's reference, rounded to uint8."""
    engine = TorchMacenkoNormalizer()
    engine.HERef, engine.maxCRef = normalizer.params["HERef"], normalizer.params["maxCRef"]
    out, _, _ = engine.normalize(image.float(), Io=IO, alpha=ALPHA, beta=BETA, stains=False)
    return out.permute(2, 0, 1).float().round().clamp(0, 255).to(torch.uint8)


def test_stain_normalised_images_are_torchstain_per_tile_and_background_passes_through(folder_with_background,
                                                                                        tmp_path, one_thread):
    norm = StainNormalizer.fit(None, "macenko")
    raw = TensorImageDataset(folder_with_background, 96, cache_dir=None, validate="none", progress=False)
    data = TensorImageDataset(folder_with_background, 96, cache_dir=None, validate="none", progress=False, stain=norm)
    background = [i for i, f in enumerate(data.files) if f.name == "zz_background.png"]
    assert data.stain_unchanged == 1 and len(background) == 1
    assert torch.equal(data.images[background[0]], raw.images[background[0]])
    for i in range(len(data)):
        if i != background[0]:
            assert torch.equal(data.images[i], _torchstain_by_hand(norm, raw.images[i])), data.files[i]
            assert not torch.equal(data.images[i], raw.images[i])
    assert torch.equal(data.labels, raw.labels)


def test_the_normalised_images_are_cached_per_normaliser_and_read_back(folder_with_background, tmp_path, one_thread):
    cache = tmp_path / "cache"
    macenko = StainNormalizer.fit(None, "macenko")
    first = TensorImageDataset(folder_with_background, 96, cache, validate="none", progress=False, stain=macenko)
    [stored] = cache.glob(f"images-*-{macenko.id}.npy")
    sidecar = json.loads(stored.with_suffix(".json").read_text())
    assert sidecar["unchanged"] == 1 and sidecar["stain"]["id"] == macenko.id
    assert np.array_equal(np.load(stored), first.images.numpy())
    # the cache is what a second run reads: mark it and see the mark come back, with the stored count
    marked = first.images.numpy().copy()
    marked[0] = 7
    np.save(stored, marked)
    again = TensorImageDataset(folder_with_background, 96, cache, validate="none", progress=False, stain=macenko)
    assert (again.images[0] == 7).all() and again.stain_unchanged == 1
    # made by another torchstain: computed again, not served
    sidecar["stain"]["library"] = "torchstain 0.0"
    stored.with_suffix(".json").write_text(json.dumps(sidecar))
    fresh = TensorImageDataset(folder_with_background, 96, cache, validate="none", progress=False, stain=macenko)
    assert torch.equal(fresh.images, first.images) and fresh.stain_unchanged == 1
    assert json.loads(stored.with_suffix(".json").read_text())["stain"]["library"] != "torchstain 0.0"
    reinhard = StainNormalizer.fit(None, "reinhard")
    other = TensorImageDataset(folder_with_background, 96, cache, validate="none", progress=False, stain=reinhard)
    assert len(list(cache.glob(f"images-*-{reinhard.id}.npy"))) == 1
    assert not torch.equal(other.images, first.images)


def test_a_cache_of_the_wrong_shape_is_ignored_and_rewritten(samples, tmp_path, one_thread):
    images = TensorImageDataset(copy_subset(samples / "pcam" / "train", tmp_path / "t", 2), 96, validate="none",
                                progress=False).images
    norm = StainNormalizer.fit(None, "macenko")
    cache = tmp_path / "x.npy"
    np.save(cache, np.zeros((3, 3, 96, 96), np.uint8))
    out, unchanged = stain_normalize_images(images, norm, cache, progress=False, chunk=3)  # chunks of 3 and 1
    assert out.shape == images.shape and unchanged == 0
    assert torch.equal(out, norm.normalize(images).images)
    assert np.array_equal(np.load(cache), out.numpy())
